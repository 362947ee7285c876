"""SimMIM (Xie et al. 2022, arXiv:2111.09886): replace random 32-pixel units of patches by a
learnable mask token, predict their raw pixels with a one-layer head, L1 on masked pixels."""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ssl_models.backbones.masking import patchify, step_generator, unit_masking, unpatchify
from ssl_models.backbones.vit_layers import init_weights, sincos_2d
from ssl_models.losses import mae_loss, simmim_loss
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.single_view import require_vit, single_view, vit_no_weight_decay


@dataclass(frozen=True)
class SimMIMConfig:
    mask_ratio: float = 0.6  # fraction of mask units hidden (paper table 3: 0.6 at 32 px)
    mask_unit: int = 32  # side of a mask unit in pixels, a multiple of the patch size
    # "l1": the paper's L1 on the masked pixels of the (normalised) input image; "norm_pix_mse":
    # MAE's MSE on per-patch normalised masked patches instead (not the paper: an ablation of
    # the target, one of the differences between SimMIM and MAE with mask tokens in its encoder)
    target: Literal["l1", "norm_pix_mse"] = "l1"
    # "linear": the paper's one-layer head. "mae": MAE's decoder without blocks (a linear map to
    # head_dim, the sin-cos position table added again, LayerNorm, a linear output); not the
    # paper: an ablation of the head, another difference from MAE with mask tokens
    head: Literal["linear", "mae"] = "linear"
    head_dim: int = 512  # the "mae" head's width (MAE's decoder_dim)


class PositionedHead(nn.Module):
    """MAE's decoder with no blocks, on every patch token: (B, L, D) -> (B, L, out)."""

    def __init__(self, dim: int, width: int, out: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(dim, width)
        self.register_buffer("pos", sincos_2d(width, grid, grid)[1:], persistent=False)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, out)
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)
        pos = self.pos if grid == (self.grid, self.grid) else sincos_2d(x.shape[-1], *grid)[1:]
        return self.pred(self.norm(x + pos.to(x.device, x.dtype)))


class SimMIM(SSLMethod):
    """batch["global"]: (B, 1, 3, H, W) -> {loss}."""

    def __init__(self, backbone: nn.Module, cfg: SimMIMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "simmim")
        p = self.backbone.patch_size
        if cfg.mask_unit % p:
            raise ValueError(f"simmim: mask_unit {cfg.mask_unit} px is not a multiple of patch {p}")
        if cfg.target not in ("l1", "norm_pix_mse"):
            raise ValueError(f"simmim: target must be 'l1' or 'norm_pix_mse', got {cfg.target!r}")
        if cfg.head not in ("linear", "mae"):
            raise ValueError(f"simmim: head must be 'linear' or 'mae', got {cfg.head!r}")
        self.backbone.enable_mask_token()
        # the reference's no_weight_decay() and no_weight_decay_keywords(): the [CLS] token, an
        # absolute position table and the relative position bias table (the mask token decays)
        self.no_weight_decay = vit_no_weight_decay(self.backbone, relative_table=True)
        if cfg.head == "mae":
            grid = self.backbone.grid
            self.head = PositionedHead(self.backbone.dim, cfg.head_dim, p * p * 3, grid)
        else:
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
        patches = self.head(tokens, grid) if self.cfg.head == "mae" else self.head(tokens)
        if self.cfg.target == "norm_pix_mse":
            target = patchify(images, p)  # (B, L, p·p·3), the layout the head predicts
            return {"loss": mae_loss(patches.float(), target.float(), mask)}
        pred = unpatchify(patches, p, grid)  # (B, 3, H, W)
        pixels = mask.reshape(b, *grid).repeat_interleave(p, 1).repeat_interleave(p, 2)
        return {"loss": simmim_loss(pred.float(), images.float(), pixels)}
