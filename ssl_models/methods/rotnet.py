"""RotNet (Gidaris et al. 2018, arXiv:1803.07728): predict which of 0°, 90°, 180°, 270° an
image was rotated by. The view recipe ``rotation`` supplies all 4 copies of each image."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import mlp
from ssl_models.losses import rotation_loss
from ssl_models.methods.base import SSLMethod


@dataclass(frozen=True)
class RotNetConfig:
    head_layers: int = 1  # a linear 4-way classifier on the pooled features (as VISSL's ResNet)
    head_hidden_dim: int = 2048  # used only when head_layers > 1


class RotNet(SSLMethod):
    """batch["global"]: (B, 4, 3, H, W), view k rotated by k·90°; batch["rotation"]: (B, 4)
    -> {loss, accuracy}."""

    def __init__(self, backbone: nn.Module, cfg: RotNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = mlp(backbone.out_dim, cfg.head_hidden_dim, 4, cfg.head_layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views, targets = batch["global"], batch["rotation"]
        if views.ndim != 5 or views.shape[1] != 4 or targets.shape != views.shape[:2]:
            raise ValueError(
                f"RotNet expects global views (B, 4, 3, H, W) and rotation (B, 4), got "
                f"{tuple(views.shape)} and {tuple(targets.shape)}"
            )
        logits = self.classifier(self.backbone(views.flatten(0, 1)))  # (4B, 4), image-major
        targets = targets.flatten()
        loss = rotation_loss(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}
