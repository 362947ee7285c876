"""Relative patch location (Doersch et al. 2015, arXiv:1505.05192): given the centre patch of a
3×3 grid and one of its 8 neighbours, predict which neighbour. Both patches go through the same
backbone; their features are concatenated and classified by an MLP (the paper's fc7-fc9)."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import relative_loc_loss
from ssl_models.methods.base import SSLMethod


@dataclass(frozen=True)
class RelativeLocConfig:
    head_hidden_dim: int = 4096  # the paper's fc7 and fc8 width after the concatenation
    head_layers: int = 3  # fc7, fc8, then the 8-way output (paper, figure 3)


class RelativeLoc(SSLMethod):
    """batch["patches"]: (B, 2, 3, S, S), the centre patch then its neighbour;
    batch["position"]: (B,) in 0..7 -> {loss, accuracy}."""

    def __init__(self, backbone: nn.Module, cfg: RelativeLocConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = mlp(2 * backbone.out_dim, cfg.head_hidden_dim, 8, cfg.head_layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        patches, targets = batch["patches"], batch["position"]
        if patches.ndim != 5 or patches.shape[1] != 2 or targets.shape != patches.shape[:1]:
            raise ValueError(
                f"RelativeLoc expects patches (B, 2, 3, S, S) and position (B,), got "
                f"{tuple(patches.shape)} and {tuple(targets.shape)}"
            )
        b = patches.shape[0]
        h = self.backbone(patches.flatten(0, 1)).view(b, -1)  # (B, 2·D): centre, neighbour
        logits = self.classifier(h)  # (B, 8)
        loss = relative_loc_loss(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}
