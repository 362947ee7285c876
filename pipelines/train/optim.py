"""Optimisers (SGD, LARS, AdamW), their parameter groups and the per-step optimizer schedules.

Biases and normalisation parameters are excluded from weight decay and from LARS adaptation, as
in SimCLR, BYOL and Barlow Twins. The learning rate scales linearly with the global batch
(``base_lr × batch / 256``, Goyal et al. 2017), warms up linearly, then follows a cosine; weight
decay optionally follows its own cosine (DINO).

Methods shape their groups with two class attributes of :class:`ssl_models.methods.base.SSLMethod`
(see ARCHITECTURE.md, "Parameter groups"):

- ``fixed_lr_modules = ("predictor",)``: submodules whose parameters keep the scaled peak lr, no
  warmup or cosine (SimSiam's predictor, the reference's ``fix_lr``);
- ``no_weight_decay = ("backbone.cls_token",)``: parameters, by full name, kept out of weight
  decay besides biases and norms (the references' ``no_weight_decay()``).

``optim.bias_lr_ratio`` gives the bias and norm groups their own rate, a fixed fraction of the
scheduled one (Barlow Twins' ``--learning-rate-biases 0.0048`` beside ``--learning-rate-weights
0.2``); each group carries it as ``lr_ratio``.
"""

from collections.abc import Iterable

import torch
from torch import nn

from pipelines.config.schema import OptimConfig
from ssl_models.schedules import cosine, warmup_cosine

__all__ = [
    "LARS",
    "build_optimizer",
    "clip_grad_per_parameter_",
    "param_groups",
    "scaled_lr",
    "set_lr",
    "warmup_cosine",
]

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _fixed_lr_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "fixed_lr_modules", ())
    for name in names:
        model.get_submodule(name)  # a clear error for a name that is not a submodule
    # longest first: a parameter falls in its innermost fixed module's group
    return tuple(sorted((f"{name}." for name in names), key=len, reverse=True))


def _no_weight_decay(model: nn.Module) -> set[str]:
    names = set(getattr(model, "no_weight_decay", ()))
    unknown = names - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(
            f"{type(model).__name__}.no_weight_decay: no parameter named '{sorted(unknown)[0]}'"
        )
    return names


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Parameter groups: regular weights, biases plus norm parameters (no decay, no LARS), each
    split further by the method's ``fixed_lr_modules`` (one group per module prefix) and
    ``no_weight_decay`` (one group per name). Every group carries ``initial_weight_decay`` (the
    schedule's scale), ``lars_exclude`` and ``fixed_lr``."""
    fixed = _fixed_lr_prefixes(model)
    undecayed = _no_weight_decay(model)
    grouped: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            # its own group when named in no_weight_decay, else its fixed-lr module's, if any
            prefix = next((q for q in fixed if full.startswith(q)), "")
            prefix = full if full in undecayed else prefix
            is_bias_or_norm = name == "bias" or isinstance(module, _NORMS) or p.ndim <= 1
            grouped.setdefault((prefix, exclude_bias_and_norm and is_bias_or_norm), []).append(p)

    groups = []
    for (prefix, excluded), params in grouped.items():
        wd = 0.0 if excluded or prefix in undecayed else weight_decay
        groups.append(
            {
                "params": params,
                "name": f"{prefix or 'default'}{' (bias/norm)' if excluded else ''}",
                "weight_decay": wd,
                "initial_weight_decay": wd,
                "lars_exclude": excluded,
                "fixed_lr": any(prefix.startswith(q) for q in fixed),
            }
        )
    return groups


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017, arXiv:1708.03888), SGD with momentum.

    For each tensor in a group without ``lars_exclude``: ``g += wd·p``, then
    ``g *= eta·‖p‖/‖g‖`` when both norms are positive; then ``v = m·v + g``, ``p -= lr·v``.
    Excluded tensors take the plain momentum step with no decay.
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
    """The configured optimizer at the scaled peak lr; ``fixed_lr`` groups stay there."""
    lr = scaled_lr(cfg, global_batch)
    if cfg.bias_lr_ratio != 1.0 and not cfg.exclude_bias_and_norm:
        raise ValueError(
            f"optim.bias_lr_ratio {cfg.bias_lr_ratio} needs optim.exclude_bias_and_norm: true "
            "(without it biases and norms share the weights' groups)"
        )
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    for group in groups:
        group["lr_ratio"] = cfg.bias_lr_ratio if group["lars_exclude"] else 1.0
        group["lr"] = lr * group["lr_ratio"]
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


@torch.no_grad()
def clip_grad_per_parameter_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each tensor's gradient down to norm ``max_norm`` when it is larger, every tensor on
    its own (``clip_gradients`` of the DINO and iBOT reference code: a coefficient
    ``max_norm / (norm + 1e-6)``, applied when below 1). Gradients that are None are skipped.
    Returns the largest gradient norm before clipping, a 0-dim tensor on the gradients' device
    (0 when there is none): nothing here waits for the device."""
    largest = torch.zeros(())
    for p in parameters:
        if p.grad is None:
            continue
        norm = torch.linalg.vector_norm(p.grad)
        largest = torch.maximum(largest.to(norm.device), norm.float())
        p.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))  # × 1 leaves it bit-identical
    return largest


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled ``lr`` on every group, times the group's ``lr_ratio``; ``fixed_lr`` groups
    keep the lr they were built with (the scaled peak: SimSiam's predictor)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr * group.get("lr_ratio", 1.0)


def set_weight_decay(
    optimizer: torch.optim.Optimizer, step: int, total_steps: int, start: float, end: float
) -> float:
    """Cosine weight decay from ``start`` to ``end`` (DINO: 0.04 → 0.4); each group scales by
    its own ``initial_weight_decay / start``, so excluded groups stay at 0. Returns the value for
    a group configured at ``start``."""
    value = cosine(step, total_steps, start, end)
    factor = value / start if start else 0.0
    for group in optimizer.param_groups:
        group["weight_decay"] = group.get("initial_weight_decay", 0.0) * factor
    return value
