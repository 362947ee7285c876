"""CAE, the context autoencoder (Chen et al. 2023, IJCV, arXiv:2202.03026).

The encoder sees only the visible patches. A latent contextual regressor (cross-attention: mask
queries at the masked positions attend to the visible representations and to themselves) predicts
the masked patches' representations; an alignment loss pulls them towards the encoder's own
representations of the masked patches (computed without gradient, as the reference's alignment
encoder shares the encoder's weights). The regressor ends in a LayerNorm, whose output is both
the aligned prediction (the encoder's tokens it is pulled towards are normalised too) and the
decoder's input. A decoder predicts the masked patches' visual tokens from the regressed
representations only. Loss: token cross-entropy + λ · alignment, λ = 2.

As the reference's ``VisionTransformerNeck`` (lxtGH/CAE ``models/modeling_cae_helper.py``), the
regressor's and the decoder's blocks each take stochastic depth rising linearly from 0 to the
encoder's rate (``--drop_path``).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.backbones.masking import (
    block_masking,
    gather_tokens,
    step_generator,
    visible_and_masked,
)
from ssl_models.backbones.vit_layers import Block, Mlp, drop_path, init_weights, sincos_2d
from ssl_models.losses import beit_loss, cae_alignment_loss, cae_loss
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.single_view import require_vit, single_view, vit_no_weight_decay
from ssl_models.tokenizer import KMeansTokenizer, TokenizerConfig, tokenizer_for


@dataclass(frozen=True)
class CAEConfig:
    mask_ratio: float = 0.5  # 98 of 196 patches, blockwise (reference --num_mask_patches 98)
    min_block_patches: int = 16  # smallest masked block, as BEiT
    min_aspect: float = 0.3
    regressor_depth: int = 4  # cross-attention blocks of the latent contextual regressor
    decoder_depth: int = 4  # self-attention blocks over the masked positions only
    decoder_dim: int = 0  # regressor/decoder width; 0: the encoder's (768 for ViT-B, as the paper)
    decoder_heads: int = 0  # 0: the encoder's
    decoder_layer_scale: float = 0.1  # reference --decoder_layer_scale_init_value
    align_weight: float = 2.0  # λ of the alignment loss (reference --align_loss_weight 2)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


class RegressorBlock(nn.Module):
    """One block of CAE's latent contextual regressor (reference ``RegressorBlock``):
    ``q += γ1·CrossAttn(LN(q + pos_q), LN(kv + pos_kv), LN(kv))``; ``q = LN(q)``;
    ``q += γ2·MLP(q)``, each residual branch under stochastic depth ``drop_path``. Keys and
    values are the visible representations and the queries."""

    def __init__(self, dim: int, heads: int, layer_scale: float, drop_path: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cae: regressor width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(dim, eps=1e-6)
        self.norm_v = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)  # the reference keeps keys bias-free
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        scale = layer_scale if layer_scale > 0 else 1.0
        self.gamma1 = nn.Parameter(torch.full((dim,), scale), requires_grad=layer_scale > 0)
        self.gamma2 = nn.Parameter(torch.full((dim,), scale), requires_grad=layer_scale > 0)
        self.drop_path = drop_path

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, kv: torch.Tensor, pos_q: torch.Tensor, pos_kv: torch.Tensor
    ) -> torch.Tensor:
        """q: (B, M, D) queries, kv: (B, V + M, D), pos_q: (B, M, D), pos_kv: (B, V + M, D)."""
        query = self._heads(self.q(self.norm_q(q + pos_q)))
        key = self._heads(self.k(self.norm_k(kv + pos_kv)))
        value = self._heads(self.v(self.norm_v(kv)))
        out = F.scaled_dot_product_attention(query, key, value)  # (B, heads, M, D / heads)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, M, D)
        x = self.norm_out(q + drop_path(self.gamma1 * out, self.drop_path, self.training))
        return x + drop_path(self.gamma2 * self.mlp(x), self.drop_path, self.training)


class CAE(SSLMethod):
    """batch["global"]: (B, 1, 3, H, W) -> {loss, token_loss, align_loss, token_accuracy}."""

    def __init__(
        self, backbone: nn.Module, cfg: CAEConfig, tokenizer: KMeansTokenizer | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "cae")
        # the reference's no_weight_decay(): the [CLS] token and an absolute position table; the
        # relative position bias table and the mask token decay
        self.no_weight_decay = vit_no_weight_decay(self.backbone, relative_table=False)
        enc_dim = self.backbone.dim
        d = cfg.decoder_dim or enc_dim
        heads = cfg.decoder_heads or self.backbone.heads
        self.tokenizer = tokenizer or tokenizer_for(cfg.tokenizer, self.backbone.patch_size, "cae")
        # the reference projects (Linear + LayerNorm) only when the widths differ
        self.to_decoder = (
            nn.Sequential(nn.Linear(enc_dim, d), nn.LayerNorm(d, eps=1e-6))
            if d != enc_dim
            else nn.Identity()
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        grid = self.backbone.grid
        self.register_buffer("decoder_pos", sincos_2d(d, grid, grid).unsqueeze(0), persistent=False)
        ls = cfg.decoder_layer_scale
        rate = self.backbone.drop_path_rate  # the reference's neck takes the encoder's
        self.regressor = nn.ModuleList(
            RegressorBlock(d, heads, ls, r)
            for r in torch.linspace(0, rate, cfg.regressor_depth).tolist()
        )
        self.regressor_norm = nn.LayerNorm(d, eps=1e-6)  # the reference neck's ``norm``
        self.decoder = nn.ModuleList(
            Block(d, heads, layer_scale=ls, drop_path=r)
            for r in torch.linspace(0, rate, cfg.decoder_depth).tolist()
        )
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)  # ``norm2``
        self.head = nn.Linear(d, self.tokenizer.codebook_size)
        parts = (self.to_decoder, self.regressor, self.regressor_norm, self.decoder)
        for module in (*parts, self.decoder_norm, self.head):
            module.apply(init_weights)  # the reference re-initialises everything Xavier-uniform
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self._ddp_params_and_buffers_to_ignore = ["tokenizer.codebook"]
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        return {}

    def positions(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        if grid == (self.backbone.grid, self.backbone.grid):
            return self.decoder_pos[:, 1:]
        return sincos_2d(self.decoder_pos.shape[-1], *grid)[1:].unsqueeze(0).to(device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = single_view(batch, "cae")
        b = images.shape[0]
        grid = self.backbone.grid_of(images)
        num_masked = round(self.cfg.mask_ratio * grid[0] * grid[1])
        mask = block_masking(
            b,
            grid,
            num_masked,
            min_block=self.cfg.min_block_patches,
            min_aspect=self.cfg.min_aspect,
            exact=True,
            generator=self.rng,
        ).to(images.device)
        ids_visible, ids_masked = visible_and_masked(mask)  # (B, V), (B, M)
        codes = gather_tokens(self.tokenizer.encode(images).unsqueeze(-1), ids_masked)[..., 0]

        visible = self.to_decoder(self.backbone.forward_tokens(images, keep=ids_visible)[:, 1:])
        with torch.no_grad():  # the alignment target: the encoder's view of the masked patches
            target = self.to_decoder(self.backbone.forward_tokens(images, keep=ids_masked)[:, 1:])

        pos = self.positions(grid, images.device).to(visible.dtype).expand(b, -1, -1)  # (B, L, d)
        pos_visible, pos_masked = gather_tokens(pos, ids_visible), gather_tokens(pos, ids_masked)
        pos_kv = torch.cat([pos_visible, pos_masked], dim=1)
        pred = self.mask_token.to(visible.dtype).expand(b, num_masked, -1)  # (B, M, d)
        for block in self.regressor:
            pred = block(pred, torch.cat([visible, pred], dim=1), pos_masked, pos_kv)
        pred = self.regressor_norm(pred)  # aligned with the target and decoded

        x = pred + pos_masked
        for block in self.decoder:
            x = block(x)
        logits = self.head(self.decoder_norm(x)).flatten(0, 1)  # (B·M, K)
        targets = codes.flatten()
        loss = cae_loss(logits, targets, pred, target, self.cfg.align_weight)
        with torch.no_grad():
            token_loss = beit_loss(logits, targets)
            align = cae_alignment_loss(pred, target)
            accuracy = (logits.argmax(1) == targets).float().mean()
        return {
            "loss": loss,
            "token_loss": token_loss,
            "align_loss": align,
            "token_accuracy": accuracy,
        }
