"""Frozen-feature evaluation: weighted kNN (and, later, the linear probe).

The kNN classifier is DINO's ``eval_knn`` (Wu et al. 2018): cosine similarity of L2-normalised
features, the k nearest training features vote for their class with weight ``exp(sim / T)``.
The math needs only torch; the dataset helpers import Ray when called.
"""

import zlib
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """train_features: (N, D), train_labels: (N,), test_features: (M, D) -> predictions (M,)."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels differ in length")
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (m, C)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    preds = weighted_knn_predict(
        train_features, train_labels, test_features, num_classes, k, temperature
    )
    return float((preds == test_labels).float().mean()) if len(test_labels) else float("nan")


def key_fraction(key: str) -> float:
    """A stable pseudo-random number in [0, 1) per row key, for deterministic splits."""
    return (zlib.crc32(key.encode()) % 1_000_003) / 1_000_003


def _select(batch: dict[str, np.ndarray], lo: float, hi: float) -> dict[str, np.ndarray]:
    keep = np.array([lo <= key_fraction(str(k)) < hi for k in batch["key"]], dtype=bool)
    return {name: column[keep] for name, column in batch.items()}


def eval_views(path: str, size: int, crop_fraction: float, lo: float = 0.0, hi: float = 1.0):
    """Ray dataset of evaluation views of the shard rows whose key fraction is in [lo, hi)."""
    import ray

    from pipelines.data.source import read_shards

    ds, manifest = read_shards(path, ["key", "image", "label"])
    if (lo, hi) != (0.0, 1.0):
        ds = ds.map_batches(_select, fn_kwargs={"lo": lo, "hi": hi}, batch_format="numpy")
    ds = ds.map_batches(
        _eval_views,
        fn_kwargs={"size": size, "crop_fraction": crop_fraction},
        batch_format="numpy",
        batch_size=256,
        compute=ray.data.TaskPoolStrategy(size=2),
    )
    return ds, manifest


def _eval_views(batch: dict[str, np.ndarray], size: int, crop_fraction: float):
    from pipelines.data.views import EvalViewMaker

    return EvalViewMaker(size, crop_fraction)(batch)


@torch.no_grad()
def embed(
    encoders: Mapping[str, nn.Module], ds, batch_size: int = 256, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every image in ``ds`` under each encoder, in one pass over the data.

    Encoders take float images in [0, 1] (see ``ssl_models.export.Encoder``).
    Returns ({name: (N, D)}, labels (N,)).
    """
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    labels = []
    for enc in encoders.values():
        enc.eval().to(device, memory_format=torch.channels_last)
    for batch in ds.iter_torch_batches(batch_size=batch_size, device=device):
        images = batch["image"].float().div_(255)
        for name, enc in encoders.items():
            feats[name].append(enc(images).float().cpu())
        labels.append(batch["label"].cpu())
    if not labels:
        raise ValueError("no images to embed (all rows filtered out or undecodable)")
    return {n: torch.cat(f) for n, f in feats.items()}, torch.cat(labels)
