"""Exponential moving averages of networks (MoCo's key encoder, BYOL's target, DINO's teacher)
and the per-step schedule of their momentum.

Only parameters are averaged, as the MoCo, BYOL and DINO reference code do; a momentum network's
BatchNorm buffers come from its own forward passes in training mode. A momentum network has no
stochastic depth: the references build their teachers without it (``main_dino.py`` and
``main_ibot.py`` pass ``drop_path_rate`` to the student only, DINOv2's ``build_model`` too, and
its ``SSLMetaArch.train`` keeps the teacher in eval mode), so the teacher's targets are a
deterministic function of its input; MoCo v3's ViTs have no drop path at all.
"""

import copy
import math

import torch
from torch import nn

from ssl_models.backbones.vit_layers import Block


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that starts equal to it, is never trained by gradient and runs its
    transformer blocks without stochastic depth (the online module keeps its own)."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    for block in ema.modules():
        if isinstance(block, Block):
            block.drop_path = 0.0
    return ema


@torch.no_grad()
def update_momentum(model: nn.Module, ema: nn.Module, m: float) -> None:
    """``ema ← m · ema + (1 − m) · model`` for every parameter, in place.

    m = 1 leaves ``ema`` unchanged; m = 0 copies ``model`` into it.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"update_momentum: m must lie in [0, 1], got {m}")
    source, target = list(model.parameters()), list(ema.parameters())
    if len(source) != len(target) or any(
        s.shape != t.shape for s, t in zip(source, target, strict=True)
    ):
        raise ValueError(
            f"update_momentum: {type(model).__name__} and {type(ema).__name__} do not have the "
            "same parameters; the momentum network must be a copy of the model"
        )
    # lerp(t, s, w) = t + w·(s − t); exact at both ends (w = 0 keeps t, w = 1 gives s)
    torch._foreach_lerp_(target, source, 1.0 - m)


def cosine_momentum(fraction: float, base: float = 0.996, final: float = 1.0) -> float:
    """Momentum at ``fraction`` ∈ [0, 1] of training, rising from ``base`` to ``final`` along a
    half cosine: ``final − (final − base)·(cos(π·fraction) + 1)/2`` (BYOL eq. 3's τ schedule,
    DINO's and MoCo v3's ``--moco-m-cos``). ``base == final`` is a constant (MoCo v1/v2)."""
    fraction = min(1.0, max(0.0, fraction))
    return final - (final - base) * (math.cos(math.pi * fraction) + 1) / 2
