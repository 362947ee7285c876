"""BYOL (Grill et al. 2020, arXiv:2006.07733): an online network (backbone, projector,
predictor) regresses the target network's projection of the other view; the target (backbone
and projector, no predictor) is an EMA of the online network with τ rising from 0.996 to 1 on a
cosine; the loss is symmetrised over the two views (L + L̃). The exported encoder is the online
backbone, the one the paper evaluates. Each view goes through the networks on its own, as the
reference, so BatchNorm statistics are per view.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import byol_loss
from ssl_models.methods.base import SSLMethod, view_group
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class BYOLConfig:
    proj_hidden_dim: int = 4096  # the paper's MLP: 4096 hidden units with BatchNorm and ReLU
    proj_dim: int = 256  # output of projector and predictor
    pred_hidden_dim: int = 4096
    momentum: float = 0.996  # τ_base, the start of the cosine schedule
    momentum_final: float = 1.0  # τ reaches 1 at the end of training


class BYOL(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, 2)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, 2)
        self.backbone_target = momentum_copy(self.backbone)
        self.projector_target = momentum_copy(self.projector)
        self.momentum_schedule = (cfg.momentum, cfg.momentum_final)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_target), (self.projector, self.projector_target)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "BYOL", count=2)
        x1, x2 = views[:, 0], views[:, 1]
        p1 = self.predictor(self.projector(self.backbone(x1)))  # (B, D)
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            z1 = self.projector_target(self.backbone_target(x1))  # (B, D)
            z2 = self.projector_target(self.backbone_target(x2))
        return {"loss": byol_loss(p1, z2) + byol_loss(p2, z1)}
