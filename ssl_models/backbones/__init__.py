"""Backbones: ``build_backbone(name, **kwargs)`` returns a module mapping images to features.

Every backbone maps ``(B, 3, H, W)`` float images to ``(B, out_dim)`` features and exposes
``out_dim``. ViTs also expose token-level ``forward_tokens`` for masked image modeling.
"""

from torch import nn

from ssl_models.backbones.resnet import ResNet, resnet
from ssl_models.backbones.vit import SIZES as VIT_SIZES
from ssl_models.backbones.vit import VisionTransformer, vit

BACKBONES = {
    "resnet18": lambda **kw: resnet("resnet18", **kw),
    "resnet34": lambda **kw: resnet("resnet34", **kw),
    "resnet50": lambda **kw: resnet("resnet50", **kw),
    "vit_tiny": lambda **kw: vit("vit_tiny", **kw),
    "vit_small": lambda **kw: vit("vit_small", **kw),
    "vit_base": lambda **kw: vit("vit_base", **kw),
}


def is_vit(name: str) -> bool:
    return name in VIT_SIZES


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "ResNet", "VisionTransformer", "build_backbone", "is_vit"]
