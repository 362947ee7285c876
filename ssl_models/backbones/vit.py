"""Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929) with token masking.

Pre-norm blocks as in timm and MAE (LayerNorm eps 1e-6, GELU MLP, qkv bias), a CLS token, and
positions from a fixed 2-D sin-cos embedding (MAE, He et al. 2022), a learned one, or no
embedding and a learned relative position bias in the attention that all blocks share (BEiT and
SimMIM: ``pos_embed="relative"``); the blocks, the sin-cos table, the bias and the
initialisations are in ``vit_layers.py``. Two ways to mask patch tokens,
for masked image modeling:

- drop them: ``forward_tokens(x, keep=ids)`` encodes only the listed patches (MAE, CAE);
- replace them: ``forward_tokens(x, mask=m)`` swaps their embeddings for a learnable mask token
  before the position embedding is added (SimMIM, BEiT, iBOT); call ``enable_mask_token()`` once.

``backbone(x)`` pools to ``(B, out_dim)`` features: the CLS token (MAE's linear probe), the mean
of the patch tokens (``pool="mean"``), or both side by side (``pool="cls_mean"``, ``out_dim`` =
2·dim: the input of BEiT's linear probe, ``run_linear_eval.py --avgpool_patchtokens``). No
pretrained weights are loaded.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.backbones.vit_layers import (
    INIT_CUTS,
    INIT_STD,
    Block,
    RelativePositionBias,
    init_weights,
    init_weights_dino,
    init_weights_normal,
    sincos_2d,
)

SIZES: dict[str, tuple[int, int, int]] = {  # name -> (dim, depth, heads), mlp ratio 4
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


class VisionTransformer(nn.Module):
    """images ``(B, 3, H, W)`` -> pooled features ``(B, out_dim)``; see the module docstring."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        pool: str = "cls",
        layer_scale: float = 0.0,
        drop_path: float = 0.0,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        if pos_embed not in ("sincos", "learned", "relative"):
            raise ValueError(f"pos_embed must be sincos, learned or relative, got {pos_embed!r}")
        if pool not in ("cls", "mean", "cls_mean"):
            raise ValueError(f"pool must be cls, mean or cls_mean, got {pool!r}")
        if init not in ("xavier", "dino") and init not in INIT_CUTS:
            raise ValueError(f"init must be xavier, dino, beit or simmim, got {init!r}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.dim = dim
        self.out_dim = 2 * dim if pool == "cls_mean" else dim
        self.heads = heads
        self.pool = pool
        self.pos_kind = pos_embed

        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rel_pos_bias = None
        if pos_embed == "sincos":
            # fixed, so recomputed rather than saved
            table = sincos_2d(dim, self.grid, self.grid).unsqueeze(0)
            self.register_buffer("pos_embed", table, persistent=False)
        elif pos_embed == "relative":  # no absolute embedding (SimMIM's USE_APE: False)
            self.pos_embed = None
            self.rel_pos_bias = RelativePositionBias(self.grid, heads)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.register_parameter("mask_token", None)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, layer_scale, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.init = init
        if init == "xavier":
            self.apply(init_weights)
            # the patch projection initialised like a linear layer (MAE)
            nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
            nn.init.zeros_(self.patch_embed.bias)
            nn.init.normal_(self.cls_token, std=0.02)
        elif init == "dino":  # DINO's, iBOT's, DINOv2's; a learned position table as above
            self.apply(init_weights_dino)
            nn.init.trunc_normal_(self.cls_token, std=INIT_STD)  # DINO, iBOT (DINOv2: std 1e-6)
        else:
            cut = INIT_CUTS[init]
            self.apply(lambda m: init_weights_normal(m, cut))
            nn.init.trunc_normal_(self.cls_token, std=INIT_STD, a=-cut, b=cut)
            if pos_embed == "learned":
                nn.init.trunc_normal_(self.pos_embed, std=INIT_STD, a=-cut, b=cut)
            # each residual branch's output projection scaled by 1 / sqrt(2 · block number), as
            # the references' fix_init_weight: the residual stream's variance grows slowly
            with torch.no_grad():
                for number, block in enumerate(self.blocks, start=1):
                    block.attn.proj.weight.div_(math.sqrt(2.0 * number))
                    block.mlp[2].weight.div_(math.sqrt(2.0 * number))

    @property
    def drop_path_rate(self) -> float:
        """The stochastic depth of the last block, the configured rate (the blocks' rates rise
        linearly to it); 0 in a momentum copy, whose blocks have none."""
        return self.blocks[-1].drop_path if len(self.blocks) else 0.0

    def enable_mask_token(self) -> None:
        """Add the learnable mask token (SimMIM, BEiT, iBOT). Separate from construction because
        methods that drop tokens must not carry an unused parameter (DDP rejects those)."""
        if self.mask_token is None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.dim))
            if self.init == "xavier":
                nn.init.normal_(self.mask_token, std=0.02)
            elif self.init == "dino":  # iBOT's masked_embed, DINOv2's mask_token: zeros
                nn.init.zeros_(self.mask_token)
            else:  # both references cut their mask token at one standard deviation
                nn.init.trunc_normal_(self.mask_token, std=INIT_STD, a=-INIT_STD, b=INIT_STD)

    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ViT expects images (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image side {h}x{w} is not a multiple of patch_size {self.patch_size}"
            )
        return h // self.patch_size, w // self.patch_size

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor | None:
        """``(1, 1 + grid_h * grid_w, dim)`` for any grid: recomputed (sin-cos) or bicubically
        interpolated (learned, as DINO does for other resolutions); None with a relative bias."""
        if self.pos_embed is None:
            return None
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        if self.pos_kind == "sincos":
            table = sincos_2d(self.dim, grid_h, grid_w).unsqueeze(0)
            return table.to(self.pos_embed.device, self.pos_embed.dtype)
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patches = patches.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1)

    def forward_tokens(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode images to normalised tokens, CLS first.

        x: (B, 3, H, W). mask: (B, L) bool, True = replace that patch by the mask token.
        keep: (B, K) long patch indices: encode only those patches, in that order.
        Returns (B, 1 + L, dim), or (B, 1 + K, dim) with ``keep``.
        """
        if mask is not None and keep is not None:
            raise ValueError("forward_tokens: pass mask (replace) or keep (drop), not both")
        grid_h, grid_w = self.grid_of(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, L, dim)
        b, length, _ = tokens.shape
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("forward_tokens(mask=...) needs enable_mask_token() first")
            if mask.shape != (b, length):
                raise ValueError(f"mask must be (B, L) = {(b, length)}, got {tuple(mask.shape)}")
            w = mask.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        pos = self.position_embedding(grid_h, grid_w)
        if pos is not None:
            tokens = tokens + pos[:, 1:]
        if keep is not None:
            if keep.ndim != 2 or keep.shape[0] != b:
                raise ValueError(f"keep must be (B, K) indices, got {tuple(keep.shape)}")
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, self.dim))
        cls = self.cls_token if pos is None else self.cls_token + pos[:, :1]
        out = torch.cat([cls.expand(b, -1, -1), tokens], dim=1)
        bias = None if self.rel_pos_bias is None else self.rel_pos_bias(grid_h, grid_w, keep)
        for block in self.blocks:
            out = block(out, bias)
        return self.norm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, out_dim): the CLS token, the mean patch token, or both."""
        tokens = self.forward_tokens(x)
        if self.pool == "cls":
            return tokens[:, 0]
        if self.pool == "mean":
            return tokens[:, 1:].mean(dim=1)
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)  # (B, 2·dim)


def vit(
    name: str,
    image_size: int = 224,
    patch_size: int = 16,
    dim: int = 0,
    depth: int = 0,
    heads: int = 0,
    mlp_ratio: float = 4.0,
    pos_embed: str = "sincos",
    pool: str = "cls",
    layer_scale: float = 0.0,
    drop_path: float = 0.0,
    init: str = "xavier",
) -> VisionTransformer:
    """A named size (``vit_tiny``, ``vit_small``, ``vit_base``) with explicit overrides."""
    if name not in SIZES:
        raise ValueError(f"unknown ViT size {name!r}; choose one of {sorted(SIZES)}")
    if image_size <= 0:
        raise ValueError(f"{name}: image_size must be positive, got {image_size}")
    d, n, h = SIZES[name]
    dim, depth, heads = dim or d, depth or n, heads or h
    if min(dim, depth, heads) <= 0:
        raise ValueError(
            f"{name}: dim, depth and heads must be positive, got {dim}, {depth}, {heads}"
        )
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        pos_embed=pos_embed,
        pool=pool,
        layer_scale=layer_scale,
        drop_path=drop_path,
        init=init,
    )
