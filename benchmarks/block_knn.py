"""kNN top-1 of a ViT checkpoint's features after every block, against its random init.

A masked-image-modeling encoder whose last blocks turn to reconstruction can hold better
features in its middle than at its output (the MAE paper's decoder-depth ablation: the shallower
the decoder, the more the encoder's last layers serve the pixels). This tool scores, for each
checkpoint of a ViT method and for the same architecture at random initialisation (the
checkpoint's config and seed, the weights its run started from):

- after block i: each token layer-normalised (no affine), the patch tokens averaged;
- output: the encoder's own features (its final norm and pooling), what the product's kNN scores.

The score is the product's kNN (``evaluate_knn``: weighted, k=200, T=0.1) on the run's own bank
and queries, as ``benchmarks/method_quality.py`` scores it: the "output" row's figures are the
run's kNN and its random-init baseline.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.block_knn \
        RUN/checkpoint_000000312 [...]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.config import Config, build_config
from pipelines.train.step import build_method


class AfterBlock(nn.Module):
    """A ViT's tokens after block ``index``, each layer-normalised (no affine), patches
    averaged: (B, 3, H, W) -> (B, dim)."""

    def __init__(self, vit: nn.Module, index: int) -> None:
        super().__init__()
        self.vit, self.index = vit, index
        self.out_dim = vit.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = self.vit.blocks[self.index].register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            self.vit(x)
        finally:
            hook.remove()
        tokens = seen[0]
        return F.layer_norm(tokens, tokens.shape[-1:])[:, 1:].mean(1)


def load(checkpoint: Path) -> tuple[Config, nn.Module, nn.Module]:
    """(config, trained encoder, random-init encoder) of a checkpoint."""
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    cfg = build_config(state["config"])
    torch.manual_seed(cfg.train.seed)  # the weights the run started from
    start = build_method(cfg).backbone
    trained = build_method(cfg)
    trained.load_state_dict(state["model"])
    return cfg, trained.backbone.eval(), start.eval()


def scores(checkpoint: Path) -> tuple[str, dict[str, list[float]]]:
    from pipelines.data.manifest import read_manifest
    from pipelines.encoders import eval_image_size
    from pipelines.train.trainer import evaluate_knn, resolve_data
    from ssl_models.export import Encoder

    cfg, trained, start = load(checkpoint)
    size = eval_image_size(cfg)
    encoders = {}
    for name, vit in (("random init", start), ("trained", trained)):
        for i in range(len(vit.blocks)):
            encoders[f"{name}/{i}"] = Encoder(
                AfterBlock(vit, i), cfg.views.mean, cfg.views.std, size
            )
        encoders[f"{name}/output"] = Encoder(vit, cfg.views.mean, cfg.views.std, size)
    split, _ = resolve_data(cfg)
    classes = len(read_manifest(split.train)[0].class_names)
    accuracy = evaluate_knn(cfg, split, encoders, classes)
    rows = {
        name: [v for k, v in accuracy.items() if k.startswith(name + "/")]
        for name in ("random init", "trained")
    }
    return cfg.method, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    args = p.parse_args()
    for checkpoint in args.checkpoints:
        method, rows = scores(checkpoint)
        depth = len(rows["trained"]) - 1
        cols = [f"block {i + 1}" for i in range(depth)] + ["output"]
        print(f"\n{method}: {checkpoint}\n\n| weights | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name, values in rows.items():
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |", flush=True)


if __name__ == "__main__":
    main()
