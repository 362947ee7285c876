"""The encoder users pull from the registry: preprocessing included, no training heads."""

import copy

import torch
from torch import nn


class Encoder(nn.Module):
    """images: (B, 3, H, W) float RGB in [0, 1] -> features (B, out_dim).

    Normalisation with the training mean and std happens inside, so callers feed plain images.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        image_size: int,
    ) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.image_size = image_size
        self.out_dim = backbone.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Encoder expects (B, 3, H, W) images, got {tuple(images.shape)}")
        return self.backbone((images.float() - self.mean) / self.std)
