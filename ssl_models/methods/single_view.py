"""The input of single-view methods (masked image modeling): one view per image."""

import torch

from ssl_models.backbones.vit import VisionTransformer


def single_view(batch: dict[str, torch.Tensor], method: str) -> torch.Tensor:
    """batch["global"]: (B, 1, 3, H, W) -> (B, 3, H, W)."""
    views = batch.get("global")
    if views is None or views.ndim != 5 or views.shape[1] != 1:
        shape = None if views is None else tuple(views.shape)
        raise ValueError(f"{method} expects one global view (B, 1, 3, H, W), got {shape}")
    return views[:, 0]


def require_vit(backbone: object, method: str) -> VisionTransformer:
    """Masked image modeling needs patch tokens: fail at construction, naming the fix."""
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(
            f"{method} needs a ViT backbone (backbone.name: vit_tiny | vit_small | vit_base), "
            f"got {type(backbone).__name__}"
        )
    return backbone
