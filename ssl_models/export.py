"""The encoder users pull from the registry: preprocessing included, no training heads.

An :class:`Encoder` travels as plain weights plus the spec that rebuilds its backbone, never as
a pickled module: :meth:`Encoder.portable_state_dict` gives the backbone's weights under key
names other code accepts without this package — a ResNet's are torchvision's
(``torchvision.models.resnet50()``'s, minus ``fc``), a ViT's are
:class:`ssl_models.backbones.VisionTransformer`'s — and :meth:`Encoder.from_portable` rebuilds
the encoder from them.
"""

import copy
from typing import Any

import torch
from torch import nn

# our ResNet stem -> torchvision's names for the same layers (the blocks are torchvision's own)
_RESNET_STEM = {"stem.0.": "conv1.", "stem.1.": "bn1."}


class Encoder(nn.Module):
    """images: (B, 3, H, W) float RGB in [0, 1] -> features (B, out_dim).

    Normalisation with the training mean and std happens inside, so callers feed plain images.
    ``spec``: how the backbone was built, ``{"name": "resnet50", "options": {...}}`` for
    :func:`ssl_models.backbones.build_backbone`; without it the encoder cannot be exported.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        image_size: int,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.image_size = image_size
        self.out_dim = backbone.out_dim
        self.spec = copy.deepcopy(spec)
        # as given: the buffers hold float32 roundings, which would print as 0.48500001430511475
        self.normalization = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Encoder expects (B, 3, H, W) images, got {tuple(images.shape)}")
        return self.backbone((images.float() - self.mean) / self.std)

    def describe(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data: the backbone spec, the input
        normalisation and size, the feature width."""
        if self.spec is None:
            raise ValueError("this Encoder has no backbone spec: build it with spec=... to export")
        return {
            "backbone": self.spec,
            **self.normalization,
            "image_size": self.image_size,
            "out_dim": self.out_dim,
        }

    def portable_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights under portable names (see the module docstring), as contiguous
        CPU tensors. A ViT's mask token is left out: it serves masked pretraining only."""
        out = {}
        resnet = self.spec is not None and self.spec["name"].startswith("resnet")
        for key, value in self.backbone.state_dict().items():
            if key == "mask_token":
                continue
            if resnet:
                for ours, theirs in _RESNET_STEM.items():
                    if key.startswith(ours):
                        key = theirs + key[len(ours) :]
            out[key] = value.detach().cpu().contiguous()
        return out

    @classmethod
    def from_portable(cls, description: dict[str, Any], state: dict[str, torch.Tensor]):
        """The encoder :meth:`describe` and :meth:`portable_state_dict` came from; every
        backbone weight must be there (strict loading)."""
        from ssl_models.backbones import build_backbone

        spec = description["backbone"]
        backbone = build_backbone(spec["name"], **spec["options"])
        if spec["name"].startswith("resnet"):
            back = {theirs: ours for ours, theirs in _RESNET_STEM.items()}
            renamed = {}
            for key, value in state.items():
                for theirs, ours in back.items():
                    if key.startswith(theirs):
                        key = ours + key[len(theirs) :]
                renamed[key] = value
            state = renamed
        backbone.load_state_dict(state, strict=True)
        encoder = cls(
            backbone,
            tuple(description["mean"]),
            tuple(description["std"]),
            int(description["image_size"]),
            spec,
        )
        if encoder.out_dim != description["out_dim"]:
            raise ValueError(
                f"rebuilt {spec['name']} gives {encoder.out_dim} features, the export says "
                f"{description['out_dim']}"
            )
        return encoder.eval()
