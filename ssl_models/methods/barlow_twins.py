"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): two views, a wide projector, and a loss
pushing their cross-correlation matrix towards the identity.

``loss_scale`` multiplies the loss that is optimised. The reference (facebookresearch/barlowtwins
``main.py``) all-reduces the cross-correlation without autograd, so under DDP's average its
gradient is the true one divided by its world size, 32 GPUs in the paper; the paper's learning
rates and weight decay were tuned on that gradient. Here the loss's gradient is the true one at
any world size (``ssl_models.losses.decorrelation``), so the recipe sets 1/32 to take the
reference's steps. ``barlow_loss`` is the unscaled loss, the value ``main.py`` prints.
"""

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
    loss_scale: float = 1.0  # the optimised loss's factor; the recipe: 1/32, main.py's gradient


class BarlowTwins(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) normalised views -> {loss, barlow_loss}."""

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
        return {"loss": self.cfg.loss_scale * loss, "barlow_loss": loss.detach()}
