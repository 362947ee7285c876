"""The Vision Transformer's building blocks and initialisations, shared by the encoder
(``vit.py``) and the MAE and CAE decoders.

Pre-norm blocks as in timm and MAE: LayerNorm eps 1e-6, multi-head attention with qkv bias, a
GELU MLP, optional layer scale (CaiT; BEiT, CAE) and stochastic depth. The fixed 2-D sin-cos
position embedding is MAE's; the relative position bias shared by all blocks is BEiT's and
SimMIM's (:class:`RelativePositionBias`). Three weight initialisations: MAE's Xavier-uniform
(:func:`init_weights`), BEiT's / SimMIM's cut normal of std 0.02 (:func:`init_weights_normal`)
and DINO's, kept by iBOT and DINOv2 (:func:`init_weights_dino`).
"""

import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE's ``get_2d_sincos_pos_embed``) ->
    ``(1 + grid_h * grid_w, dim)``, row 0 (the CLS position) all zeros."""
    if dim % 4:
        raise ValueError(f"a sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, dim / 2)
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    emb = torch.cat([one_axis(xs), one_axis(ys)], dim=1)  # (h*w, dim), row-major patch order
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb]).float()


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim); bias: added to the attention logits, broadcast to (B, heads, N, N)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        if bias is not None:
            bias = bias.to(q.dtype)  # bf16 under autocast
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block; ``layer_scale > 0`` scales each residual branch by a learned
    per-channel factor starting at that value (BEiT, CAE)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        layer_scale: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
            self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), bias)
        if self.gamma1 is not None:
            a = self.gamma1 * a
        x = x + drop_path(a, self.drop_path, self.training)
        m = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            m = self.gamma2 * m
        return x + drop_path(m, self.drop_path, self.training)


class RelativePositionBias(nn.Module):
    """One learned attention-logit offset per head for each 2-D offset between two patches, and
    three more for CLS -> patch, patch -> CLS and CLS -> CLS; one table for all blocks (BEiT's and
    SimMIM's shared relative position bias), zero at initialisation.

    ``bias(grid_h, grid_w)`` -> ``(1, heads, 1 + L, 1 + L)`` for the tokens [CLS, patches in
    row-major order]; with ``keep`` (B, K) patch indices, ``(B, heads, 1 + K, 1 + K)`` for
    [CLS, the kept patches in that order]. A grid up to the built one reads its offsets from the
    table as they are; a larger one stretches the table's offset grid bicubically.
    """

    def __init__(self, grid: int, heads: int) -> None:
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, heads))
        self.register_buffer("index", self._index(grid, grid, grid, grid), persistent=False)

    @staticmethod
    def _index(grid_h: int, grid_w: int, reach_h: int, reach_w: int) -> torch.Tensor:
        """(1 + L, 1 + L) rows of a table whose offset grid spans ``±(reach - 1)`` per axis."""
        ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + reach_h - 1  # query row minus key row, from 0
        dx = xs[:, None] - xs[None, :] + reach_w - 1
        offsets = (2 * reach_h - 1) * (2 * reach_w - 1)
        index = torch.empty(1 + len(ys), 1 + len(ys), dtype=torch.long)
        index[1:, 1:] = dy * (2 * reach_w - 1) + dx
        index[0, :] = offsets  # CLS attending to a patch
        index[:, 0] = offsets + 1  # a patch attending to CLS
        index[0, 0] = offsets + 2
        return index

    def forward(self, grid_h: int, grid_w: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        table = self.table
        if (grid_h, grid_w) == (self.grid, self.grid):
            index = self.index
        elif grid_h <= self.grid and grid_w <= self.grid:
            index = self._index(grid_h, grid_w, self.grid, self.grid).to(table.device)
        else:
            span, heads = 2 * self.grid - 1, table.shape[1]
            offsets = table[: span * span].t().reshape(1, heads, span, span)
            offsets = F.interpolate(
                offsets, size=(2 * grid_h - 1, 2 * grid_w - 1), mode="bicubic", align_corners=True
            )
            table = torch.cat([offsets[0].flatten(1).t(), table[span * span :]])
            index = self._index(grid_h, grid_w, grid_h, grid_w).to(table.device)
        if keep is None:
            return table[index].permute(2, 0, 1).unsqueeze(0)  # (1, heads, 1 + L, 1 + L)
        rows = torch.cat([keep.new_zeros(keep.shape[0], 1), keep + 1], dim=1)  # (B, 1 + K)
        index = index[rows[:, :, None], rows[:, None, :]]  # (B, 1 + K, 1 + K)
        return table[index].permute(0, 3, 1, 2)  # (B, heads, 1 + K, 1 + K)


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


INIT_STD = 0.02  # BEiT's and SimMIM's init_std
# where the normal draws of each scheme are cut: BEiT's trunc_normal_ wrapper cuts at one
# standard deviation (a=-std, b=std); SimMIM's ViT calls timm's with its defaults, a=-2, b=2
# (absolute values: a hundred standard deviations, so an uncut normal in effect)
INIT_CUTS = {"beit": INIT_STD, "simmim": 2.0}


def init_weights_normal(module: nn.Module, cut: float) -> None:
    """BEiT's and SimMIM's initialisation of the encoder: linear and convolution weights from a
    normal of std 0.02 cut at ``±cut``, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-cut, b=cut)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_weights_dino(module: nn.Module) -> None:
    """DINO's ViT initialisation (``_init_weights`` of facebookresearch/dino and bytedance/ibot
    ``vision_transformer.py``; DINOv2's ``init_weights_vit_timm``): linear weights from a normal
    of std 0.02 cut at ±2 (timm's default, absolute: uncut in effect), zero biases, unit
    LayerNorms. Convolutions (the patch projection) keep PyTorch's default, as there."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
