"""Projection and prediction heads: thin configurations of one MLP builder, and prototypes."""

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
) -> nn.Sequential:
    """``num_layers`` linear layers with BatchNorm and ReLU between them.

    ``last_batch_norm`` adds an affine-free BatchNorm after the output layer (SimCLR v2, SimSiam's
    projector, MoCo v3), ``last_bias=False`` drops the output bias where that BatchNorm makes it
    redundant. ``num_layers=1`` is a plain linear layer (MoCo v1's head).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


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
