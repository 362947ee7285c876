"""Projection and prediction heads: thin configurations of one MLP builder, DINO's head and
SwAV's prototypes."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    last_scale: bool = False,
) -> nn.Sequential:
    """``num_layers`` linear layers with BatchNorm and ``activation`` between them.

    ``last_batch_norm`` adds an affine-free BatchNorm after the output layer (SimSiam's projector,
    MoCo v3), ``last_bias=False`` drops the output bias where that BatchNorm makes it redundant.
    ``last_scale`` gives that BatchNorm a learned per-dimension scale and still no shift (SimCLR
    v2's ``batch_norm_relu(center=False)``, which keeps TF's default ``scale=True``).
    ``num_layers=1`` is a plain linear layer (MoCo v1's head). DINO's head uses
    ``activation=nn.GELU`` and no BatchNorm.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(activation())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_batch_norm:
        norm = nn.BatchNorm1d(out_dim, affine=last_scale)
        if last_scale:
            norm.bias = None  # center=False: a scale γ, no shift β
        layers.append(norm)
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, arXiv:2104.14294; ``DINOHead`` in the
    reference ``vision_transformer.py``): ``(N, in_dim) -> (N, out_dim)``.

    An MLP (GELU, BatchNorm only with ``use_bn``) down to ``bottleneck_dim``, an L2
    normalisation, then a weight-normalised linear layer without bias whose per-output norm
    ``g`` starts at 1. With ``norm_last_layer`` that norm stays 1 (not trained), so the output is
    the cosine similarity to ``out_dim`` learned directions: more stable, as the reference notes.
    The MLP's weights start truncated-normal with std 0.02, as the reference's.
    Reused by iBOT (whose patch tokens may get a second last layer, :func:`normed_last_layer`)
    and DINOv2.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp(
            in_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm=use_bn, activation=nn.GELU
        )
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The last layer keeps nn.Linear's default initialisation, as the reference (it is
        # created after the truncated-normal pass).
        self.last_layer = normed_last_layer(bottleneck_dim, out_dim, norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_dim) -> (N, bottleneck_dim), unit length: what the last layer sees (iBOT
        feeds it to a second last layer for patch tokens)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_dim) -> (N, out_dim)."""
        return self.last_layer(self.bottleneck(x))


def normed_last_layer(in_dim: int, out_dim: int, norm_last_layer: bool = True) -> nn.Module:
    """DINO's last layer: a bias-free weight-normalised linear layer whose per-output norm ``g``
    starts at 1 and, with ``norm_last_layer``, stays 1 (not trained)."""
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    g = layer.parametrizations.weight.original0  # (out_dim, 1), the norms
    with torch.no_grad():
        g.fill_(1.0)
    g.requires_grad_(not norm_last_layer)
    return layer


class Prototypes(nn.Linear):
    """SwAV's K prototype vectors (Caron et al. 2020, arXiv:2006.09882): a bias-free linear
    layer, z: (B, dim) -> scores (B, K). The rows are put back on the unit sphere by
    :meth:`normalize_`, which the method calls from its step hook (never in ``forward``), so
    that scores of normalised embeddings are cosine similarities."""

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__(dim, num_prototypes, bias=False)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))
