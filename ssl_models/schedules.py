"""Per-step schedules of the training step: the learning rate and the weight decay.

Pure functions of the optimizer step, so a run resumed from a checkpoint holding only its step
is back on exactly the same curve. ``step`` counts optimizer steps taken before the current one
(0-based, as :class:`ssl_models.methods.base.Progress`); ``total_steps`` is the whole run.
Conventions follow the reference code of the papers that introduced each schedule.
"""

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (clamped after).

    DINO's ``cosine_scheduler`` without warmup: weight decay 0.04 → 0.4.
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
