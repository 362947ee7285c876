"""What a run's encoder sorts the embedded images by: their class, or what is random per image.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.shortcut_probe RUN/checkpoint_N [...]

The embedded set's classes differ by shape or texture only; colour, brightness, position and
clutter are drawn at random for every image, and an image's crops share its colours. For each
checkpoint (any method, ResNet or ViT) the exported encoder, trained and at its initialisation
(the same seed), is scored by the weighted kNN (k=200, T=0.1) on whole 32-pixel images (bank:
``--bank`` training images per class; queries: ``--queries`` test images per class) against
three labelings of the same images:

  class       the shape or texture (10 classes; chance 0.100)
  colour      the dominant colour channel, argmax of the mean R, G, B (3 values)
  brightness  the tercile of the mean luma over the bank (3 values)

with each nuisance's majority share as its chance level. Features that follow colour and not
shape score high on the second and near chance on the first. No Ray, no MLflow; one process.
"""

import argparse

import torch

from benchmarks.swav_diagnostics import checkpoint_methods, dominant_channel, eval_images
from pipelines.evaluate import knn_top1

LUMA = (0.299, 0.587, 0.114)


def pixels(cfg, images: torch.Tensor) -> torch.Tensor:
    """Normalised images (N, 3, H, W) -> their pixels in [0, 1]."""
    mean = torch.tensor(cfg.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 3, 1, 1)
    return images * std + mean


def brightness_tercile(luma: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mean luma per image (N,) -> 0, 1 or 2 by the two ``edges`` (the bank's terciles)."""
    return torch.bucketize(luma, edges)


def labelings(cfg, bank, query) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """name -> (bank labels, query labels, number of values)."""
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)
    luma = [(pixels(cfg, d[0]) * weights).sum(1).mean((1, 2)) for d in (bank, query)]
    edges = torch.quantile(luma[0], torch.tensor([1 / 3, 2 / 3]))
    return {
        "class": (bank[1], query[1], 10),
        "colour": (dominant_channel(cfg, bank[0]), dominant_channel(cfg, query[0]), 3),
        "brightness": (brightness_tercile(luma[0], edges), brightness_tercile(luma[1], edges), 3),
    }


def majority_share(labels: torch.Tensor) -> float:
    return float(labels.bincount().max()) / len(labels)


@torch.no_grad()
def scores(encoder: torch.nn.Module, bank, query, labels: dict) -> dict[str, float]:
    """The kNN top-1 of ``encoder``'s features against each labeling."""
    encoder.eval()
    fb, fq = (torch.cat([encoder(x) for x in d[0].split(256)]) for d in (bank, query))
    return {name: knn_top1(fb, b, fq, q, n) for name, (b, q, n) in labels.items()}


def probe_checkpoint(path: str, bank_per_class: int, query_per_class: int) -> list[str]:
    """Markdown rows (method, encoder, one kNN per labeling) for a run's checkpoint."""
    _, cfg, methods = checkpoint_methods(path)
    bank, query = eval_images(cfg, bank_per_class, 0), eval_images(cfg, query_per_class, 1)
    labels = labelings(cfg, bank, query)
    rows = []
    for name, method in methods.items():
        s = scores(method.encoder, bank, query, labels)
        rows.append(
            f"| {cfg.method} | {name} | " + " | ".join(f"{v:.3f}" for v in s.values()) + " |"
        )
    chance = " | ".join(f"{majority_share(q):.3f}" for _, q, _ in labels.values())
    return [f"| chance (majority share) | | {chance} |", *rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="run checkpoint directories")
    ap.add_argument("--bank", type=int, default=200, help="training images per class")
    ap.add_argument("--queries", type=int, default=50, help="test images per class")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| method | encoder | class | colour | brightness |\n|---|---|---|---|---|")
    for i, path in enumerate(args.checkpoints):
        rows = probe_checkpoint(path, args.bank, args.queries)
        print("\n".join(rows if i == 0 else rows[1:]), flush=True)


if __name__ == "__main__":
    main()
