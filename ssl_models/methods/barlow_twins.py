"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): two views, a wide projector, and a loss
pushing their cross-correlation matrix towards the identity."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import barlow_twins_loss
from ssl_models.methods.base import SSLMethod, view_group


@dataclass(frozen=True)
class BarlowTwinsConfig:
    lambda_: float = 0.0051  # weight of the off-diagonal (redundancy) term, the paper's value
    proj_hidden_dim: int = 8192  # the paper's projector is 8192-8192-8192; wider is better
    proj_dim: int = 8192
    proj_layers: int = 3  # Linear-BN-ReLU twice, then a bias-free Linear
    gather_distributed: bool = True  # batch statistics over the global batch, as SyncBN does


class BarlowTwins(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) normalised views -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers, last_bias=False
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "BarlowTwins", count=2)
        # one pass per view, as the reference: BatchNorm statistics stay those of one view
        z1 = self.projector(self.backbone(views[:, 0]))  # (B, D)
        z2 = self.projector(self.backbone(views[:, 1]))
        loss = barlow_twins_loss(z1, z2, self.cfg.lambda_, self.cfg.gather_distributed)
        return {"loss": loss}
