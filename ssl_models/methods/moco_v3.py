"""MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): two views, a query branch with projector
and predictor, a momentum branch (backbone and projector) for keys, in-batch negatives from the
global batch, no queue, the loss symmetrised over the two views and scaled by 2T.

Heads follow the reference's ResNet setup (``moco/builder.py``): a 2-layer projector and a
2-layer predictor, bias-free linear layers, BatchNorm between them and an affine-free BatchNorm
after the projector (the ViT setup uses a 3-layer projector: ``proj_layers: 3``). Each view goes
through the backbone on its own, so BatchNorm statistics are per view as in the reference.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import moco_v3_loss
from ssl_models.methods.base import SSLMethod, view_group
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class MoCoV3Config:
    temperature: float = 1.0  # the reference's default for ResNets (--moco-t); 0.2 for ViTs
    proj_layers: int = 2  # ResNet: 2; ViT: 3
    proj_hidden_dim: int = 4096  # --moco-mlp-dim, hidden width of projector and predictor
    proj_dim: int = 256  # --moco-dim, the output of projector and predictor
    pred_hidden_dim: int = 4096
    momentum: float = 0.99  # --moco-m, the start of the cosine schedule
    momentum_final: float = 1.0  # --moco-m-cos rises to 1; equal to momentum: constant
    gather_distributed: bool = True  # negatives from the global batch, as the reference


class MoCoV3(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            cfg.proj_layers,
            last_batch_norm=True,
            last_bias=False,
        )
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, 2, last_bias=False)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projector_momentum = momentum_copy(self.projector)
        self.momentum_schedule = (cfg.momentum, cfg.momentum_final)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_momentum), (self.projector, self.projector_momentum)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "MoCo v3", count=2)
        x1, x2 = views[:, 0], views[:, 1]
        q1 = self.predictor(self.projector(self.backbone(x1)))  # (B, D)
        q2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1 = self.projector_momentum(self.backbone_momentum(x1))  # (B, D)
            k2 = self.projector_momentum(self.backbone_momentum(x2))
        t, gather = self.cfg.temperature, self.cfg.gather_distributed
        loss = moco_v3_loss(q1, k2, t, gather) + moco_v3_loss(q2, k1, t, gather)
        return {"loss": loss}
