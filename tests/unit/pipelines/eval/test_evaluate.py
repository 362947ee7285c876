"""Frozen-feature evaluation math: weighted kNN by hand, the linear probe, key-hash splits."""

import numpy as np
import pytest
import torch

from pipelines.eval.probes import knn_top1, linear_probe_top1, weighted_knn_predict
from pipelines.eval.sets import HOLDOUT, key_fraction


def test_weighted_knn_votes_by_exp_similarity_over_t():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit vectors
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.96, 0.28]])  # cos = 0.96 to #0, 0.936 to #1, 0.28 to #2
    # k=2: class 0 gets exp(0.96/T), class 1 exp(0.936/T): class 0 wins at any T
    assert weighted_knn_predict(bank, labels, query, 2, k=2, temperature=0.1).tolist() == [0]
    # k=3, T=1: class 1 gets e^0.936 + e^0.28 = 3.87 > e^0.96 = 2.61
    assert weighted_knn_predict(bank, labels, query, 2, k=3, temperature=1.0).tolist() == [1]
    # scaling features changes nothing (cosine)
    assert knn_top1(5 * bank, labels, 3 * query, torch.tensor([1]), 2, 3, 1.0) == 1.0


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y_train, y_test = torch.arange(90) % 3, torch.arange(30) % 3
    x_train = centres[y_train] + torch.randn(90, 16, generator=g) * 0.3
    x_test = centres[y_test] + torch.randn(30, 16, generator=g) * 0.3
    assert linear_probe_top1(x_train, y_train, x_test, y_test, 3, epochs=20, batch_size=32) == 1.0
    # labels unrelated to the features: near chance, not perfect
    shuffled = y_train[torch.randperm(90, generator=g)]
    assert linear_probe_top1(x_train, shuffled, x_test, y_test, 3, epochs=20) < 0.7


def test_linear_probe_needs_data():
    with pytest.raises(ValueError, match="labeled train and test"):
        linear_probe_top1(torch.zeros(0, 4), torch.zeros(0), torch.zeros(2, 4), torch.zeros(2), 2)


def test_key_hash_split_is_stable_and_about_the_holdout():
    keys = [f"class_{i % 10}/img_{i}.jpg" for i in range(5000)]
    fractions = [key_fraction(k) for k in keys]
    assert fractions == [key_fraction(k) for k in keys]  # a pure function of the key
    held = sum(f < HOLDOUT for f in fractions) / len(keys)
    assert 0.08 < held < 0.12


def small_shards(dest, n: int = 40):
    """n decodable rows (label = index mod 3, one unknown -1) plus the undecodable kinds,
    spread over several files and row groups."""
    from pipelines.data.shard.writer import Row, write_shards
    from tests.images import bad_records, jpeg

    rows = [
        Row(f"img/{i}", jpeg(24, 20, seed=i), -1 if i == 7 else i % 3, 24, 20) for i in range(n)
    ]
    bad = [Row(f"bad/{name}", data, 0, 0, 0) for name, data in bad_records().items()]
    write_shards(rows[:10] + bad + rows[10:], str(dest), ["a", "b", "c"], max_rows=7)
    return {r.key: r.label for r in rows}


def test_in_process_views_hold_the_selected_labeled_rows_in_full_batches(tmp_path):
    from pipelines.eval.sets import EvalSplit, LocalViews, split_views

    labels = small_shards(tmp_path / "s")
    bank, queries = split_views(
        EvalSplit(str(tmp_path / "s"), ""), 16, 0.875, keys=True, in_process_rows=1000
    )
    assert isinstance(bank, LocalViews) and isinstance(queries, LocalViews)
    seen = {}
    for part, (lo, hi) in ((bank, (HOLDOUT, 1.0)), (queries, (0.0, HOLDOUT))):
        batches = list(part.iter_batches(batch_size=4, batch_format="numpy"))
        sizes = [len(b["label"]) for b in batches]
        assert all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4
        for b in batches:
            assert b["image"].shape[1:] == (3, 16, 16) and b["image"].dtype == np.uint8
            for key, label in zip(b["key"], b["label"], strict=True):
                assert lo <= key_fraction(key) < hi and label == labels[key]  # aligned
                seen[key] = part
    # every labeled decodable row, once, on its side; the unknown label and bad rows are not
    assert sorted(seen) == sorted(k for k, y in labels.items() if y >= 0)


def test_sets_over_the_in_process_limit_stay_ray_datasets(tmp_path):
    from pipelines.eval.sets import LocalViews, eval_views

    small_shards(tmp_path / "s", n=10)
    ds, manifest = eval_views(
        str(tmp_path / "s"), 16, 1.0, in_process_rows=manifest_rows(tmp_path) - 1
    )
    assert not isinstance(ds, LocalViews)
    ds, _ = eval_views(str(tmp_path / "s"), 16, 1.0, in_process_rows=manifest.total_rows)
    assert isinstance(ds, LocalViews)
    ds, _ = eval_views(str(tmp_path / "s"), 16, 1.0, in_process_rows=0)
    assert not isinstance(ds, LocalViews)


def manifest_rows(tmp_path) -> int:
    from pipelines.data.manifest import read_manifest

    return read_manifest(str(tmp_path / "s"))[0].total_rows


def batches_of(views, size: int) -> list[dict]:
    return list(views.iter_batches(batch_size=size, batch_format="numpy"))


def test_held_views_hand_out_the_batches_of_the_views_they_were_made_from(tmp_path):
    from pipelines.eval.sets import EvalSplit, HeldViews, held_views, split_views

    small_shards(tmp_path / "s")
    split = EvalSplit(str(tmp_path / "s"), "")
    made = split_views(split, 16, 0.875, in_process_rows=1000)
    held = held_views(split, 16, 0.875, in_process_rows=1000, max_bytes=2**20)
    assert all(isinstance(h, HeldViews) for h in held)
    for fresh, kept in zip(made, held, strict=True):
        for size in (4, 7, 256):  # whole batches, then the rest; the same ones twice
            for _ in range(2):
                want, got = batches_of(fresh, size), batches_of(kept, size)
                assert [len(b["label"]) for b in got] == [len(b["label"]) for b in want]
                for a, b in zip(want, got, strict=True):
                    assert a.keys() == b.keys()
                    assert all(np.array_equal(a[c], b[c]) for c in a)


def test_held_views_only_for_small_sets_within_the_byte_limit(tmp_path):
    from pipelines.eval.sets import EvalSplit, held_views

    small_shards(tmp_path / "s", n=10)
    rows = manifest_rows(tmp_path)
    split = EvalSplit(str(tmp_path / "s"), "")
    assert held_views(split, 16, 1.0, rows, max_bytes=rows * 3 * 16 * 16) is not None
    assert held_views(split, 16, 1.0, rows, max_bytes=rows * 3 * 16 * 16 - 1) is None
    assert held_views(split, 16, 1.0, rows - 1, max_bytes=2**30) is None  # a Ray dataset's set
    assert held_views(split, 16, 1.0, 0, max_bytes=2**30) is None  # in-process views are off


def test_held_views_of_an_empty_selection_hand_out_nothing(tmp_path):
    from pipelines.data.manifest import read_manifest
    from pipelines.eval.sets import HeldViews, LocalViews

    small_shards(tmp_path / "s", n=10)
    shards = read_manifest(str(tmp_path / "s"))
    nothing = {"lo": 0.5, "hi": 0.5, "labeled_only": True}
    held = HeldViews.of(LocalViews(shards, 16, 1.0, nothing, keys=False))
    assert batches_of(held, 4) == [] and held.nbytes == 0
