"""The model a config names: its backbone (ResNet or ViT options) and the method around it."""

import dataclasses
from typing import Any

from torch import nn

from pipelines.config.schema import Config
from ssl_models.backbones import build_backbone, is_vit
from ssl_models.methods.base import SSLMethod
from ssl_models.registry import get_method


def backbone_spec(cfg: Config) -> dict[str, Any]:
    """``{"name", "options"}`` for :func:`ssl_models.backbones.build_backbone`: the backbone a
    config names, as plain data (an exported encoder carries it). A ViT's position embedding is
    built for ``backbone.vit.image_size``, or, when that is 0, for the size of the global views
    (the size the method and the kNN evaluation feed it)."""
    b = cfg.backbone
    if is_vit(b.name):
        options = dataclasses.asdict(b.vit)
        if not options["image_size"]:
            groups = cfg.views.groups
            options["image_size"] = (groups.get("global") or next(iter(groups.values()))).size
        return {"name": b.name, "options": options}
    options = {
        "width": b.width,
        "cifar_stem": b.cifar_stem,
        "stem_stride": b.stem_stride,
        "zero_init_residual": b.zero_init_residual,
    }
    return {"name": b.name, "options": options}


def backbone_from_config(cfg: Config) -> nn.Module:
    """The backbone of :func:`backbone_spec`, at its initialisation."""
    spec = backbone_spec(cfg)
    return build_backbone(spec["name"], **spec["options"])


def build_method(cfg: Config) -> SSLMethod:
    """The configured method around the configured backbone, at its initialisation."""
    return get_method(cfg.method).cls(backbone_from_config(cfg), cfg.method_args)
