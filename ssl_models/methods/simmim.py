"""SimMIM (Xie et al. 2022, arXiv:2111.09886): replace random 32-pixel units of patches by a
learnable mask token, predict their raw pixels with a one-layer head, L1 on masked pixels."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.backbones.masking import step_generator, unit_masking, unpatchify
from ssl_models.losses import simmim_loss
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.single_view import require_vit, single_view, vit_no_weight_decay


@dataclass(frozen=True)
class SimMIMConfig:
    mask_ratio: float = 0.6  # fraction of mask units hidden (paper table 3: 0.6 at 32 px)
    mask_unit: int = 32  # side of a mask unit in pixels, a multiple of the patch size


class SimMIM(SSLMethod):
    """batch["global"]: (B, 1, 3, H, W) -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: SimMIMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "simmim")
        p = self.backbone.patch_size
        if cfg.mask_unit % p:
            raise ValueError(f"simmim: mask_unit {cfg.mask_unit} px is not a multiple of patch {p}")
        self.backbone.enable_mask_token()
        # the reference's no_weight_decay() and no_weight_decay_keywords(): the [CLS] token, an
        # absolute position table and the relative position bias table (the mask token decays)
        self.no_weight_decay = vit_no_weight_decay(self.backbone, relative_table=True)
        # the paper's 1x1 conv + pixel shuffle is this linear map applied to each patch token
        self.head = nn.Linear(self.backbone.dim, p * p * 3)
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        return {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = single_view(batch, "simmim")
        grid = self.backbone.grid_of(images)
        p = self.backbone.patch_size
        b = images.shape[0]
        mask = unit_masking(b, grid, self.cfg.mask_unit // p, self.cfg.mask_ratio, self.rng)
        mask = mask.to(images.device)  # (B, L)
        tokens = self.backbone.forward_tokens(images, mask=mask)[:, 1:]  # (B, L, D)
        pred = unpatchify(self.head(tokens), p, grid)  # (B, 3, H, W)
        pixels = mask.reshape(b, *grid).repeat_interleave(p, 1).repeat_interleave(p, 2)
        return {"loss": simmim_loss(pred.float(), images.float(), pixels)}
