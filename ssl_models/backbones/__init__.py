"""Backbones: ``build_backbone(name, **kwargs)`` returns a module mapping images to features.

Every backbone maps ``(B, 3, H, W)`` float images to ``(B, out_dim)`` features and exposes
``out_dim``.
"""

from torch import nn

from ssl_models.backbones.resnet import ResNet, resnet

BACKBONES = {
    "resnet18": lambda **kw: resnet("resnet18", **kw),
    "resnet34": lambda **kw: resnet("resnet34", **kw),
    "resnet50": lambda **kw: resnet("resnet50", **kw),
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "ResNet", "build_backbone"]
