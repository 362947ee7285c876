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


def vit_no_weight_decay(vit: VisionTransformer, relative_table: bool) -> tuple[str, ...]:
    """Full names (under ``backbone.``) of the ViT's [CLS] token, its learned position embedding
    if it has one, and with ``relative_table`` its relative position bias table: what SimMIM's
    (all three), BEiT's and CAE's (the first two) ``no_weight_decay()`` keep out of decay."""
    names = ["cls_token"]
    if isinstance(vit.pos_embed, torch.nn.Parameter):
        names.append("pos_embed")
    if relative_table and vit.rel_pos_bias is not None:
        names.append("rel_pos_bias.table")
    return tuple(f"backbone.{n}" for n in names)
