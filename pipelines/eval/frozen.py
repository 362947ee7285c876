"""Frozen-feature evaluation: the one flow that scores an encoder on labeled data.

Embed the bank, embed the queries, score every query by weighted kNN over the bank and, when
asked, by a linear probe trained on the bank features (the maths in ``probes.py``; which rows are
bank and queries in ``sets.py``). The final evaluation of ``pretrain``
(``pipelines/train/finish.py``), ``sslpipe eval`` (``offline.py``), the method survey
(``tuning/survey.py``) and the quality benchmarks (``benchmarks/baselines.py``) all call
:func:`evaluate_encoders`, so one encoder on one split scores the same everywhere.

The online kNN monitor (``monitors.py``) shares only the kNN maths: it embeds with the encoder
being trained, whose mode and memory format this pass would change.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from pipelines.config.schema import EvalConfig
from pipelines.data.manifest import read_manifest
from pipelines.eval.probes import knn_top1, linear_probe_top1
from pipelines.eval.sets import HOLDOUT, EvalSplit, split_views

KNN, LINEAR = "knn_top1", "linear_top1"  # the metric names every caller reports

log = logging.getLogger(__name__)


class EmptySet(ValueError):
    """Nothing to embed: every row unlabeled, outside the key-hash range, or undecodable.
    ``side``: ``bank`` or ``queries`` once :func:`evaluate_views` knows which."""

    def __init__(self, message: str, side: str = "") -> None:
        super().__init__(message)
        self.side = side


class Views(Protocol):
    """What the pass iterates: a Ray dataset or ``sets.LocalViews`` of evaluation views."""

    def iter_batches(self, batch_size: int = ..., batch_format: str = ...) -> Iterable[dict]: ...


@dataclass(frozen=True)
class Scores:
    """Top-1 accuracies of each encoder and the row counts behind them."""

    top1: dict[str, dict[str, float]]  # encoder name -> {"knn_top1": …, "linear_top1": …}
    bank_rows: int  # labeled rows embedded as the kNN bank / the probe's training set
    query_rows: int  # labeled rows scored (the queries / the probe's test set)


@torch.no_grad()
def embed(
    encoders: Mapping[str, nn.Module],
    ds: Views,
    batch_size: int = 256,
    device: str = "cpu",
    with_keys: bool = False,
):
    """Features of every image in ``ds`` (rows ``image`` uint8 (3, S, S), ``label``, optionally
    ``key``) under each encoder, in one pass over the data.

    Encoders take float images in [0, 1] (see ``ssl_models.export.Encoder``).
    Returns ({name: (N, D)}, labels (N,)), plus the keys (N,) when ``with_keys``.
    """
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    labels, keys = [], []
    for enc in encoders.values():
        enc.eval().to(device, memory_format=torch.channels_last)
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        images = torch.tensor(batch["image"], device=device)  # a copy: Ray hands read-only arrays
        images = images.float().div_(255).contiguous(memory_format=torch.channels_last)
        for name, enc in encoders.items():
            feats[name].append(enc(images).float().cpu())
        labels.append(torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)))
        if with_keys:
            keys.extend(str(k) for k in batch["key"])
    if not labels:
        raise EmptySet("no images to embed (all rows filtered out or undecodable)")
    out = ({n: torch.cat(f) for n, f in feats.items()}, torch.cat(labels))
    return (*out, keys) if with_keys else out


def evaluate_views(
    encoders: Mapping[str, nn.Module],
    bank: Views,
    queries: Views,
    num_classes: int,
    settings: EvalConfig,
    knn: bool = True,
    linear: bool = False,
) -> Scores:
    """Each encoder's kNN top-1 (``settings.knn_k``, ``knn_temperature``) and/or linear-probe
    top-1 (``settings.linear_*``) of the ``queries`` against the ``bank``; one embedding pass per
    side for all encoders (``settings.batch_size``)."""
    if not (knn or linear):
        raise ValueError("evaluation needs kNN, the linear probe or both")
    s = settings
    embedded = {}
    for side, views in (("bank", bank), ("queries", queries)):
        try:
            embedded[side] = embed(encoders, views, s.batch_size)
        except EmptySet as e:
            raise EmptySet(f"the {side}: {e}", side) from e
    bank_x, bank_y = embedded["bank"]  # {name: (N, D)}, (N,)
    query_x, query_y = embedded["queries"]  # {name: (M, D)}, (M,)
    top1: dict[str, dict[str, float]] = {}
    for name in encoders:
        b, q = bank_x[name], query_x[name]
        scores = {}
        if knn:
            scores[KNN] = knn_top1(b, bank_y, q, query_y, num_classes, s.knn_k, s.knn_temperature)
        if linear:
            scores[LINEAR] = linear_probe_top1(
                b,
                bank_y,
                q,
                query_y,
                num_classes,
                s.linear_epochs,
                s.linear_lr,
                s.linear_weight_decay,
                s.linear_batch_size,
            )
        top1[name] = scores
    return Scores(top1, len(bank_y), len(query_y))


def warn_if_shared(split: EvalSplit, bank_manifest, query_manifest) -> None:
    """Warn when the bank and the queries hold the same shard files (by checksum, so a copy
    counts too): a query then finds itself in the bank, and the top-1 reads too high."""
    bank = {f.sha256 for f in bank_manifest.files if f.rows}
    queries = {f.sha256 for f in query_manifest.files if f.rows}
    shared = len(bank & queries)
    if shared:
        log.warning(
            "warning: the bank %s and the queries %s share %d of %d shard files (same "
            "checksums): a query finds itself among its neighbours (and in the probe's training "
            "set), so top-1 reads too high; give held-out shards as --eval-data "
            "(data.eval_path), or leave it out to hold out %s of the bank's rows",
            split.train,
            split.eval,
            shared,
            len(queries),
            f"{HOLDOUT:.0%}",
        )


def evaluate_encoders(
    encoders: Mapping[str, nn.Module],
    split: EvalSplit,
    settings: EvalConfig,
    knn: bool = True,
    linear: bool = False,
    resources: dict[str, float] | None = None,
    views: tuple[Views, Views] | None = None,
) -> Scores:
    """:func:`evaluate_views` on the bank and queries of ``split`` (rules in ``sets.py``), viewed
    at the encoders' own ``image_size`` with ``settings.crop_fraction``; the classes are those of
    ``split.train``'s manifest. ``resources``: custom Ray resources of the view tasks
    (``data.task_resources``). ``views``: (bank, queries) made earlier under the same rules
    (``sets.held_views``), instead of making them here."""
    sizes = {getattr(e, "image_size", None) for e in encoders.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"encoders must share one input side (ssl_models.export.Encoder.image_size), "
            f"got {sorted(map(str, sizes))}"
        )
    manifest = read_manifest(split.train)[0]
    classes = len(manifest.class_names)
    if classes < 2:
        raise ValueError(f"{split.train}: evaluation needs labeled shards (2+ classes)")
    if split.eval:
        warn_if_shared(split, manifest, read_manifest(split.eval)[0])
    bank, queries = views or split_views(
        split,
        sizes.pop(),
        settings.crop_fraction,
        resources=resources,
        in_process_rows=settings.in_process_rows,
    )
    try:
        return evaluate_views(encoders, bank, queries, classes, settings, knn, linear)
    except EmptySet as e:
        raise EmptySet(split.empty(e.side, manifest.total_rows), e.side) from e
