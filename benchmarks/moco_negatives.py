"""Where MoCo's InfoNCE denominator comes from, checkpoint by checkpoint: same-class negatives.

MoCo v1/v2's loss rises after its first epochs on CIFAR-10 while kNN improves. One reading: as the
features group images by class, the queue's same-class keys (about a tenth of it with ten
classes) become negatives as close as the positive, and the loss, which counts them as negatives,
rises. This tool measures that on labelled CIFAR-10 test images (whole images, eval mode), for
each saved checkpoint of a MoCo run:

- ``same-class share``: of each query's negative mass ``sum_j exp(q·k_j / T)`` over the other
  images' momentum keys, the part from keys of its own class (chance: (n_c - 1) / (N - 1));
- ``neg lse``: the mean over queries of ``logsumexp_j q·k_j / T`` over the other images' keys,
  the negative part of the loss's denominator;
- the mean cosine of a query to its own image's key (the positive without augmentation), to
  same-class keys and to other-class keys, and, within one encoder, between the queries of
  different images (q-q) and between their keys (k-k);
- the product's weighted kNN top-1 (k=200, T=0.1) on the backbone's features of the same
  images, every other one the bank and the rest the queries.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.moco_negatives \
        --cifar ../shared/data/cifar10-jpeg.tar.gz CHECKPOINT_DIR [CHECKPOINT_DIR ...]

Checkpoints come from any MoCo run, e.g. ``method_quality --methods moco_v1 --set
train.keep_checkpoints=64`` (each holds ``state.pt`` with the model and its config).
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.quality_data import cifar_test_sample
from benchmarks.swav_diagnostics import checkpoint_methods
from pipelines.evaluate import knn_top1


def negative_stats(
    q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, temperature: float
) -> dict[str, float]:
    """The module docstring's figures for L2-normalised queries and keys (N, D) of N labelled
    images; each query's negatives are the other images' keys."""
    logits = q @ k.T / temperature
    others = ~torch.eye(len(q), dtype=torch.bool)
    same = (labels[:, None] == labels[None, :]) & others
    logits = logits.masked_fill(~others, float("-inf"))
    negative_lse = torch.logsumexp(logits, dim=1)
    same_lse = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    cos = q @ k.T
    return {
        "same_class_share": (same_lse - negative_lse).exp().mean().item(),
        "chance": (same.sum(1).float() / others.sum(1)).mean().item(),
        "negative_lse": negative_lse.mean().item(),
        "cos_self": cos.diagonal().mean().item(),
        "cos_same": cos[same].mean().item(),
        "cos_other": cos[others & ~same].mean().item(),
        # the same without crossing encoders: how narrow each encoder's own embedding is
        "cos_qq": (q @ q.T)[others].mean().item(),
        "cos_kk": (k @ k.T)[others].mean().item(),
    }


@torch.no_grad()
def measure(checkpoint: Path, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    state, cfg, methods = checkpoint_methods(checkpoint)
    method = methods["trained"]
    mean = torch.tensor(cfg.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    features = method.backbone(x)
    q = F.normalize(method.projector(features), dim=1)
    k = F.normalize(method.projector_momentum(method.backbone_momentum(x)), dim=1)
    return {
        "step": int(state["step"]),
        **negative_stats(q, k, labels, method.cfg.temperature),
        # every other image the bank, the rest the queries
        "knn": knn_top1(features[::2], labels[::2], features[1::2], labels[1::2], 10),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--cifar", required=True, help="cifar10-jpeg.tar.gz")
    p.add_argument("--per-class", type=int, default=200, help="test images per class")
    args = p.parse_args()
    x, labels = cifar_test_sample(args.cifar, args.per_class)
    print(
        "| step | same-class share (chance) | neg lse | cos self | cos same | cos other "
        "| cos q-q | cos k-k | kNN |\n|---|---|---|---|---|---|---|---|---|"
    )
    for checkpoint in sorted(args.checkpoints):
        r = measure(checkpoint, x, labels)
        print(
            f"| {r['step']} | {r['same_class_share']:.3f} ({r['chance']:.3f}) "
            f"| {r['negative_lse']:.3f} | {r['cos_self']:.3f} | {r['cos_same']:.3f} "
            f"| {r['cos_other']:.3f} | {r['cos_qq']:.3f} | {r['cos_kk']:.3f} | {r['knn']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
