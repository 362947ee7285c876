"""SimCLR v1 (Chen et al. 2020, arXiv:2002.05709): two views, MLP projection, NT-Xent.

The loss is NT-Xent as the reference computes it, each view's mean over its anchors summed over
the two views (twice the mean of the paper's Algorithm 1): the scale LARS' weight decay was
tuned against.

SimCLR v2 (Chen et al. 2020, arXiv:2006.10029) is the same class with its own recipe
(``configs/simclr_v2.yaml``): a deeper projection head (3 layers, BatchNorm after the last one as
in the reference code, with a learned scale and no shift: google-research/simclr
``model_util.py`` ``projection_head``, ``linear_layer(use_bias=False, use_bn=True)``) and v2's
optimisation (800 epochs, weight decay 1e-4, 5% warmup). What v2 adds and we do not do: bigger
and selective-kernel ResNets (ResNet-152 3× + SK), fine-tuning from the projector's first layer,
the optional MoCo-style memory of negatives (the paper reports about 1%), and the distillation
stage on unlabeled data. The exported encoder is the backbone, as in v2's linear evaluation.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import nt_xent_loss
from ssl_models.methods.base import SSLMethod, view_group


@dataclass(frozen=True)
class SimCLRConfig:
    temperature: float = 0.5  # the paper's best at batch 4096 is 0.1; 0.5 suits small batches
    proj_hidden_dim: int = 2048  # the paper's projection width is the backbone's (2048 for RN50)
    proj_dim: int = 128  # output dimension of the projection g(h)
    proj_layers: int = 2  # v1: 2 layers; SimCLR v2 uses 3
    # BatchNorm on the output layer with a scale, no shift (v2's reference head)
    proj_last_batch_norm: bool = False
    gather_distributed: bool = True  # negatives from the global batch, as the paper


class SimCLR(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) normalised views -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            cfg.proj_layers,
            last_batch_norm=cfg.proj_last_batch_norm,
            last_bias=not cfg.proj_last_batch_norm,
            last_scale=cfg.proj_last_batch_norm,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "SimCLR", count=2)
        b = views.shape[0]
        h = self.backbone(views.transpose(0, 1).flatten(0, 1))  # (2B, D), view-major
        z = self.projector(h)
        z1, z2 = z[:b], z[b:]
        loss = nt_xent_loss(z1, z2, self.cfg.temperature, self.cfg.gather_distributed)
        return {"loss": loss}
