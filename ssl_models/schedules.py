"""Per-step schedules shared by the training step and the methods' hooks.

Pure functions of the optimizer step, so a run resumed from a checkpoint holding only its step
is back on exactly the same curve. ``step`` counts optimizer steps taken before the current one
(0-based, as :class:`ssl_models.methods.base.Progress`); ``total_steps`` is the whole run.
Conventions follow the reference code of the papers that introduced each schedule.
"""

import math

from torch import nn


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (clamped after).

    DINO's ``cosine_scheduler`` without warmup: weight decay 0.04 → 0.4, and EMA momentum.
    """
    progress = min(1.0, max(0, step) / max(1, total_steps))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float
) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps`` (``peak·(step+1)/warmup``: the first
    step already moves), then a cosine from ``peak`` to ``final`` over the remaining steps
    (SimCLR, BYOL, Goyal et al. 2017 for the warmup)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine(step - warmup_steps, max(1, total_steps - warmup_steps), peak, final)


def momentum_cosine(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum ``τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2``: ``base`` at step 0, 1 at the end.

    BYOL, Grill et al. 2020, arXiv:2006.07733, section 3.2; DINO uses the same (0.996 → 1).
    """
    return cosine(step, total_steps, base, final)


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """``start`` at step 0, linearly to ``end`` at ``warmup_steps``, then ``end``.

    DINO's teacher temperature (0.04 → 0.07 over 30 epochs; Caron et al. 2021,
    arXiv:2104.14294), taken per step here where the reference code steps it per epoch.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * max(0, step) / warmup_steps


def is_frozen(step: int, frozen_steps: int) -> bool:
    """Whether a layer frozen for the first ``frozen_steps`` optimizer steps is still frozen
    (DINO's last layer, SwAV's prototypes: one epoch, i.e. ``steps_per_epoch`` steps)."""
    return step < frozen_steps


def cancel_gradients(module: nn.Module) -> None:
    """Drop the gradients of ``module``'s parameters so the optimizer skips them entirely (no
    update, no weight decay, no momentum), as DINO's ``cancel_gradients_last_layer``. Call it in
    ``on_after_backward`` while :func:`is_frozen`."""
    for p in module.parameters():
        p.grad = None
