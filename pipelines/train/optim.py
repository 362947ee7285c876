"""Optimisers (SGD, LARS, AdamW) and per-step schedules.

Biases and normalisation parameters are excluded from weight decay and from LARS adaptation, as
in SimCLR, BYOL and Barlow Twins. The learning rate scales linearly with the global batch
(``base_lr × batch / 256``, Goyal et al. 2017), warms up linearly, then follows a cosine.
"""

import math
from collections.abc import Iterable

import torch
from torch import nn

from pipelines.config import OptimConfig

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: regular weights, and biases plus norm parameters (no decay, no LARS).

    Parameters of the submodules a method names in ``fixed_lr_modules`` (SimSiam's predictor)
    go into copies of those groups marked ``fixed_lr``, which :func:`set_lr` leaves at the peak.
    """
    fixed = {
        id(p)
        for name in getattr(model, "fixed_lr_modules", ())
        for p in model.get_submodule(name).parameters()
    }
    regular, excluded = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_bias_or_norm = name == "bias" or isinstance(module, _NORMS) or p.ndim <= 1
            (excluded if exclude_bias_and_norm and is_bias_or_norm else regular).append(p)
    groups = [{"params": regular, "weight_decay": weight_decay, "lars_exclude": False}]
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars_exclude": True})
    out = []
    for g in groups:
        scheduled = [p for p in g["params"] if id(p) not in fixed]
        kept = [p for p in g["params"] if id(p) in fixed]
        out.append({**g, "params": scheduled, "fixed_lr": False})
        if kept:
            out.append({**g, "params": kept, "fixed_lr": True})
    return out


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017, arXiv:1708.03888), SGD with momentum.

    For each tensor in a group without ``lars_exclude``: ``g += wd·p``, then
    ``g *= eta·‖p‖/‖g‖`` when both norms are positive; then ``v = m·v + g``, ``p -= lr·v``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(g)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["eta"] * p_norm / g_norm,
                        torch.ones_like(p_norm),
                    )
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    return cfg.base_lr * global_batch / 256


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    lr = scaled_lr(cfg, global_batch)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_exclude")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float
) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``final``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled lr; ``fixed_lr`` groups keep the one they were built with (the peak)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr
