"""SimCLR v1 (Chen et al. 2020, arXiv:2002.05709): two views, MLP projection, NT-Xent."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import nt_xent_loss
from ssl_models.methods.base import SSLMethod


@dataclass(frozen=True)
class SimCLRConfig:
    temperature: float = 0.5  # the paper's best at batch 4096 is 0.1; 0.5 suits small batches
    proj_hidden_dim: int = 2048  # the paper's projection width is the backbone's (2048 for RN50)
    proj_dim: int = 128  # output dimension of the projection g(h)
    proj_layers: int = 2  # v1: 2 layers; SimCLR v2 uses 3
    gather_distributed: bool = True  # negatives from the global batch, as the paper


class SimCLR(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) normalised views -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["global"]
        if views.ndim != 5 or views.shape[1] != 2:
            raise ValueError(
                f"SimCLR expects global views (B, 2, 3, H, W), got {tuple(views.shape)}"
            )
        b = views.shape[0]
        h = self.backbone(views.transpose(0, 1).flatten(0, 1))  # (2B, D), view-major
        z = self.projector(h)
        z1, z2 = z[:b], z[b:]
        loss = nt_xent_loss(z1, z2, self.cfg.temperature, self.cfg.gather_distributed)
        return {"loss": loss}
