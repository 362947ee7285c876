"""SimSiam (Chen & He 2021, arXiv:2011.10566): one network, two views, a bottleneck predictor
on one side and a stop-gradient on the other, symmetrised (½ D(p1, z2) + ½ D(p2, z1)); no
momentum encoder, no negatives.

Projector as the reference: 3 bias-free linear layers of the backbone's width with BatchNorm and
ReLU, an affine-free BatchNorm at the end (the CIFAR variant has 2: ``proj_layers: 2``).
Predictor: a bottleneck of a quarter of the width (2048 → 512 → 2048), BatchNorm and ReLU in
the middle, none at the output. The predictor's learning rate stays at its peak value
(``--fix-pred-lr`` in the reference) when ``fix_predictor_lr`` is set.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import simsiam_loss
from ssl_models.methods.base import SSLMethod, view_group


@dataclass(frozen=True)
class SimSiamConfig:
    proj_hidden_dim: int = 2048  # the backbone's width for ResNet-50
    proj_dim: int = 2048  # d, the output of projector and predictor
    proj_layers: int = 3  # ImageNet: 3; the paper's CIFAR variant: 2
    pred_hidden_dim: int = 512  # the bottleneck, d / 4
    fix_predictor_lr: bool = True  # the predictor keeps the peak lr (the paper's best setting)


class SimSiam(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig) -> None:
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
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, 2)
        self.fixed_lr_modules = ("predictor",) if cfg.fix_predictor_lr else ()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "SimSiam", count=2)
        z1 = self.projector(self.backbone(views[:, 0]))  # (B, D)
        z2 = self.projector(self.backbone(views[:, 1]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # simsiam_loss detaches its target: the stop-gradient
        return {"loss": 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))}
