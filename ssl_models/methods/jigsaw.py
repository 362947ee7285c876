"""Jigsaw puzzles (Noroozi & Favaro 2016, arXiv:1603.09246): predict which permutation of a
fixed set shuffled the 3×3 tiles of an image. The context-free network: every tile through the
same backbone on its own, the 9 features concatenated in slot order, an MLP over the
permutation classes (the paper's fc7-fc8; its per-tile fc6 is the backbone's pooled output)."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import jigsaw_loss
from ssl_models.methods.base import SSLMethod


@dataclass(frozen=True)
class JigsawConfig:
    num_permutations: int = 1000  # classes; must equal views.jigsaw.permutations
    head_hidden_dim: int = 4096  # the paper's fc7 width
    head_layers: int = 2  # fc7, then the permutation classifier fc8
    standardise_tiles: bool = True  # zero mean, unit std per tile and channel, as the paper


def standardise_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """tiles: (N, 3, S, S) -> each tile and channel to mean 0 and (unbiased) std 1, so that
    low-level statistics shared by neighbouring tiles give no shortcut; flat channels keep std 1
    as divisor (the reference's ``s[s == 0] = 1``)."""
    mean = tiles.mean(dim=(2, 3), keepdim=True)
    std = tiles.std(dim=(2, 3), keepdim=True)
    return (tiles - mean) / torch.where(std > 0, std, torch.ones_like(std))


class Jigsaw(SSLMethod):
    """batch["tiles"]: (B, 9, 3, S, S) shuffled tiles; batch["permutation"]: (B,) the class of
    the permutation -> {loss, accuracy}."""

    def __init__(self, backbone: nn.Module, cfg: JigsawConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = mlp(
            9 * backbone.out_dim, cfg.head_hidden_dim, cfg.num_permutations, cfg.head_layers
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tiles, targets = batch["tiles"], batch["permutation"]
        if tiles.ndim != 5 or tiles.shape[1] != 9 or targets.shape != tiles.shape[:1]:
            raise ValueError(
                f"Jigsaw expects tiles (B, 9, 3, S, S) and permutation (B,), got "
                f"{tuple(tiles.shape)} and {tuple(targets.shape)}"
            )
        b = tiles.shape[0]
        x = tiles.flatten(0, 1)  # (9B, 3, S, S)
        if self.cfg.standardise_tiles:
            x = standardise_tiles(x)
        h = self.backbone(x).view(b, -1)  # (B, 9·D), in slot order
        logits = self.classifier(h)  # (B, num_permutations)
        loss = jigsaw_loss(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}
