"""VICReg (Bardes et al. 2022, arXiv:2105.04906): variance, invariance and covariance
regularisation of two views' expander outputs."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import vicreg_terms
from ssl_models.methods.base import SSLMethod, view_group


@dataclass(frozen=True)
class VICRegConfig:
    sim_weight: float = 25.0  # λ, invariance (MSE) weight, as the reference's sim-coeff
    var_weight: float = 25.0  # μ, variance hinge weight (std-coeff)
    cov_weight: float = 1.0  # ν, covariance weight (cov-coeff)
    proj_hidden_dim: int = 8192  # the paper's expander is 8192-8192-8192
    proj_dim: int = 8192
    proj_layers: int = 3  # Linear-BN-ReLU twice, then a bias-free Linear
    gather_distributed: bool = True  # variance and covariance over the global batch


class VICReg(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) normalised views -> {loss, invariance, variance,
    covariance} (the terms unweighted, for logging)."""

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers, last_bias=False
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "VICReg", count=2)
        # one pass per view, as the reference: BatchNorm statistics stay those of one view
        z1 = self.projector(self.backbone(views[:, 0]))  # (B, D)
        z2 = self.projector(self.backbone(views[:, 1]))
        terms = vicreg_terms(z1, z2, self.cfg.gather_distributed)
        loss = (
            self.cfg.sim_weight * terms["invariance"]
            + self.cfg.var_weight * terms["variance"]
            + self.cfg.cov_weight * terms["covariance"]
        )
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
