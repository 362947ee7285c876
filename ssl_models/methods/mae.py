"""MAE (He et al. 2022, arXiv:2111.06377): encode the visible 25% of patches, reconstruct the
pixels of the masked ones with a light decoder; the loss counts masked patches only."""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.backbones.masking import (
    gather_tokens,
    patchify,
    random_masking,
    step_generator,
)
from ssl_models.backbones.vit_layers import Block, init_weights, sincos_2d
from ssl_models.losses import mae_loss
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.single_view import require_vit, single_view


@dataclass(frozen=True)
class MAEConfig:
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder (paper: 75% best)
    decoder_dim: int = 512  # the light decoder's width (paper's default 512)
    decoder_depth: int = 8  # decoder blocks (8 in the paper; fewer still learn, fig. / table 1a)
    decoder_heads: int = 16
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (table 1d: better features)
    # Table 1c's ablation, not the recipe, kept to reproduce the paper's own comparison: the
    # encoder sees every patch, the masked ones replaced by a learnable mask token (as SimMIM and
    # BEiT do), and the decoder takes its output as is. Linear probing 59.6 with it, 73.5 without.
    encoder_mask_tokens: bool = False


class MAE(SSLMethod):
    """batch["global"]: (B, 1, 3, H, W) -> {loss}. Exports the encoder; the decoder stays here."""

    def __init__(self, backbone: nn.Module, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "mae")
        d, p = cfg.decoder_dim, self.backbone.patch_size
        self.decoder_embed = nn.Linear(self.backbone.dim, d)
        # one mask token, where the masked patches enter: the decoder's, or the encoder's
        self.mask_token = None if cfg.encoder_mask_tokens else nn.Parameter(torch.zeros(1, 1, d))
        if cfg.encoder_mask_tokens:
            self.backbone.enable_mask_token()
        grid = self.backbone.grid
        self.register_buffer("decoder_pos", sincos_2d(d, grid, grid).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(d, cfg.decoder_heads) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, p * p * 3)
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_weights)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        return {}

    def forward_decoder(
        self, latent: torch.Tensor, restore: torch.Tensor | None, grid: tuple[int, int]
    ) -> torch.Tensor:
        """latent: (B, 1 + K, D) encoded CLS + visible patches, restore: (B, L) ->
        pixel predictions (B, L, p·p·3) for every patch, in patch order. With ``restore`` None
        the latent already holds every patch in patch order (``encoder_mask_tokens``)."""
        x = self.decoder_embed(latent)  # (B, 1 + K, d)
        b, n, d = x.shape
        if restore is None:
            patches = x[:, 1:]
        else:
            length = restore.shape[1]
            filler = self.mask_token.to(x.dtype).expand(b, length + 1 - n, d)
            patches = gather_tokens(torch.cat([x[:, 1:], filler], dim=1), restore)  # (B, L, d)
        pos = self.decoder_pos
        if grid != (self.backbone.grid, self.backbone.grid):
            pos = sincos_2d(d, *grid).unsqueeze(0).to(x.device)
        x = torch.cat([x[:, :1], patches], dim=1) + pos.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = single_view(batch, "mae")
        grid = self.backbone.grid_of(images)
        draw = random_masking(
            images.shape[0], grid[0] * grid[1], self.cfg.mask_ratio, self.rng, images.device
        )
        if self.cfg.encoder_mask_tokens:
            latent = self.backbone.forward_tokens(images, mask=draw.mask)  # (B, 1 + L, D)
            pred = self.forward_decoder(latent, None, grid)
        else:
            latent = self.backbone.forward_tokens(images, keep=draw.keep)  # (B, 1 + K, D)
            pred = self.forward_decoder(latent, draw.restore, grid)  # (B, L, p·p·3)
        target = patchify(images, self.backbone.patch_size)
        loss = mae_loss(pred.float(), target.float(), draw.mask, self.cfg.norm_pix_loss)
        return {"loss": loss}
