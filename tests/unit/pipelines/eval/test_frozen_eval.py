"""evaluate_views / evaluate_encoders: known answers on images whose colour is (or is not) their
class, the eval settings reaching the vote, and the errors that name what is wrong."""

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.config.schema import EvalConfig
from pipelines.eval.frozen import KNN, LINEAR, evaluate_encoders, evaluate_views
from pipelines.eval.sets import HOLDOUT, EvalSplit, key_fraction

SETTINGS = EvalConfig(knn_k=5, batch_size=16, linear_epochs=30, linear_batch_size=32)


class MeanColour(nn.Module):
    """images: (B, 3, S, S) in [0, 1] -> (B, 3) mean colour: a fixed, parameter-free encoder."""

    def __init__(self, image_size: int = 8) -> None:
        super().__init__()
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


class ArrayViews:
    """Evaluation views held in memory, batched as ``sets.LocalViews`` batches them."""

    def __init__(self, colours: np.ndarray, labels: np.ndarray, side: int = 8) -> None:
        # colours: (N, 3) uint8 -> images (N, 3, side, side) of that solid colour
        self.images = np.broadcast_to(colours[:, :, None, None], (*colours.shape, side, side))
        self.labels = labels

    def iter_batches(self, batch_size: int = 256, batch_format: str = "numpy"):
        for i in range(0, len(self.labels), batch_size):
            yield {
                "image": self.images[i : i + batch_size],
                "label": self.labels[i : i + batch_size],
            }


def colour_views(n: int, seed: int, shuffle_labels: bool = False) -> ArrayViews:
    """n solid colours, class c bright in channel c (brightness varies, the others dim)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    colours = rng.integers(0, 25, (n, 3))
    colours[np.arange(n), labels] = rng.integers(100, 256, n)
    if shuffle_labels:
        labels = rng.permutation(labels)
    return ArrayViews(colours.astype(np.uint8), labels)


def test_separable_colours_score_one_on_both_probes():
    scores = evaluate_views(
        {"mean": MeanColour()}, colour_views(90, 0), colour_views(30, 1), 3, SETTINGS, linear=True
    )
    assert scores.top1 == {"mean": {KNN: 1.0, LINEAR: 1.0}}
    assert (scores.bank_rows, scores.query_rows) == (90, 30)


def test_labels_unrelated_to_the_features_score_near_chance():
    bank, queries = colour_views(300, 0, shuffle_labels=True), colour_views(300, 1)
    top1 = evaluate_views({"mean": MeanColour()}, bank, queries, 3, SETTINGS).top1["mean"]
    assert set(top1) == {KNN}  # no probe unless asked
    assert 0.2 < top1[KNN] < 0.47  # chance is 1/3; the separable case above scores 1.0


def test_k_and_temperature_reach_the_vote():
    # features (mean colour / 255): bank (1, 0), (0.8, 0.6), (0, 1); the query (245, 71) has
    # cosine 0.9605, 0.9354 and 0.2783 to them. k=2: class 0 wins at any T; k=3, T=1: class 1
    # gets e^0.9354 + e^0.2783 = 3.87 > e^0.9605 = 2.61
    bank = ArrayViews(
        np.array([[255, 0, 0], [204, 153, 0], [0, 255, 0]], np.uint8), np.array([0, 1, 1])
    )
    query = ArrayViews(np.array([[245, 71, 0]], np.uint8), np.array([1]))
    enc = {"mean": MeanColour()}
    k2 = EvalConfig(knn_k=2, knn_temperature=0.1)
    k3 = EvalConfig(knn_k=3, knn_temperature=1.0)
    assert evaluate_views(enc, bank, query, 2, k2).top1["mean"][KNN] == 0.0
    assert evaluate_views(enc, bank, query, 2, k3).top1["mean"][KNN] == 1.0


def test_every_encoder_is_scored_on_the_same_pass():
    class Dim(MeanColour):  # drops the channel that carries class 0: those queries go wrong
        def forward(self, images):
            return super().forward(images)[:, 1:]

    scores = evaluate_views(
        {"full": MeanColour(), "dim": Dim()}, colour_views(90, 0), colour_views(30, 1), 3, SETTINGS
    )
    assert scores.top1["full"][KNN] == 1.0
    assert scores.top1["dim"][KNN] < 0.9


def test_neither_probe_is_an_error():
    with pytest.raises(ValueError, match="kNN, the linear probe or both"):
        evaluate_views(
            {"m": MeanColour()}, colour_views(3, 0), colour_views(3, 1), 3, SETTINGS, knn=False
        )


def colour_shards(dest, n: int, labeled: bool = True, first: int = 0) -> dict[str, int]:
    """n solid-colour JPEG rows, i = first…first+n-1 (class i mod 3 bright in channel
    i mod 3); key -> label."""
    from PIL import Image

    from pipelines.data.shard.writer import Row, write_shards
    from tests.images import encode

    rows = []
    for i in range(first, first + n):
        colour = [20, 20, 20]
        colour[i % 3] = 120 + (i * 37) % 130
        data = encode(Image.new("RGB", (20, 20), tuple(colour)), "JPEG", quality=95)
        rows.append(Row(f"img/{i}", data, i % 3 if labeled else -1, 20, 20))
    write_shards(rows, str(dest), ["r", "g", "b"] if labeled else [], max_rows=16)
    return {r.key: r.label for r in rows}


def test_a_split_carves_its_queries_by_key_hash_and_scores_them(tmp_path):
    labels = colour_shards(tmp_path / "s", 150)
    split = EvalSplit(str(tmp_path / "s"), "")
    scores = evaluate_encoders({"mean": MeanColour(16)}, split, SETTINGS, linear=True)
    held = sum(key_fraction(k) < HOLDOUT for k in labels)
    assert held >= 5 and (scores.bank_rows, scores.query_rows) == (150 - held, held)
    assert scores.top1 == {"mean": {KNN: 1.0, LINEAR: 1.0}}


def test_split_errors_name_the_problem(tmp_path):
    colour_shards(tmp_path / "u", 6, labeled=False)
    with pytest.raises(ValueError, match=r"u: evaluation needs labeled shards \(2\+ classes\)"):
        evaluate_encoders({"m": MeanColour()}, EvalSplit(str(tmp_path / "u"), ""), SETTINGS)
    split = EvalSplit(str(tmp_path / "u"), "")
    with pytest.raises(ValueError, match=r"one input side .* got \['16', '8'\]"):
        evaluate_encoders({"a": MeanColour(8), "b": MeanColour(16)}, split, SETTINGS)
    with pytest.raises(ValueError, match=r"one input side .* got \['None'\]"):
        evaluate_encoders({"a": nn.Identity()}, split, SETTINGS)


def test_an_empty_holdout_names_the_split_and_the_fix(tmp_path):
    labels = colour_shards(tmp_path / "tiny", 6)
    assert all(key_fraction(k) >= HOLDOUT for k in labels)  # no row falls in the holdout
    split = EvalSplit(str(tmp_path / "tiny"), "")
    with pytest.raises(ValueError) as caught:
        evaluate_encoders({"m": MeanColour()}, split, SETTINGS)
    message = str(caught.value)
    assert message.startswith(f"no queries: the fixed 10% of {tmp_path / 'tiny'}'s 6 rows")
    assert "--eval-data" in message
    colour_shards(tmp_path / "unlabeled", 6, labeled=False)
    split = EvalSplit(str(tmp_path / "tiny"), str(tmp_path / "unlabeled"))
    with pytest.raises(ValueError, match=r"^no queries: .*unlabeled holds no labeled"):
        evaluate_encoders({"m": MeanColour()}, split, SETTINGS)


def test_bank_and_queries_from_the_same_shards_warn(tmp_path):
    import logging
    import shutil

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    colour_shards(tmp_path / "a", 40)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # the same files under another name
    colour_shards(tmp_path / "b", 20, first=40)  # other images
    records, frozen = Records(), logging.getLogger("pipelines.eval.frozen")
    frozen.addHandler(records)
    try:
        for queries in ("a", "copy", "b"):
            split = EvalSplit(str(tmp_path / "a"), str(tmp_path / queries))
            evaluate_encoders({"m": MeanColour()}, split, SETTINGS)
    finally:
        frozen.removeHandler(records)
    assert len(records.messages) == 2  # "a" itself and its copy
    message = records.messages[1]
    assert message.startswith(f"warning: the bank {tmp_path / 'a'} and the queries ")
    assert "share 3 of 3 shard files" in message and "reads too high" in message


def test_views_made_earlier_score_as_the_views_made_there(tmp_path):
    from pipelines.eval.sets import held_views
    from tests.unit.pipelines.eval.test_evaluate import small_shards

    small_shards(tmp_path / "s", n=60)
    split = EvalSplit(str(tmp_path / "s"), "")
    settings = EvalConfig(knn_k=5, batch_size=16, in_process_rows=1000)
    encoders = {"mean": MeanColour(image_size=16)}
    made_there = evaluate_encoders(encoders, split, settings)
    held = held_views(split, 16, settings.crop_fraction, 1000, 2**20)
    made_earlier = evaluate_encoders(encoders, split, settings, views=held)
    assert made_earlier == made_there
    assert made_there.query_rows > 0
