"""What every method shares: the contract the training step relies on.

A method is an ``nn.Module`` whose ``forward(batch)`` returns a dict holding ``loss`` and the
terms worth logging. State that changes outside gradient descent (EMA teachers, centres, queues,
temperatures) is changed by the explicit hooks below, called by the training step, never as a
side effect of ``forward``.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Progress:
    """Where training stands, for per-step schedules."""

    step: int  # optimizer steps taken before this one, 0-based
    total_steps: int  # optimizer steps in the whole run
    steps_per_epoch: int

    @property
    def epoch(self) -> int:
        return self.step // max(1, self.steps_per_epoch)

    @property
    def fraction(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


class SSLMethod(nn.Module):
    """Base class of every method; subclasses assemble backbone, heads and loss."""

    #: attribute holding the encoder to export (the backbone, or an EMA teacher's copy)
    encoder_name: str = "backbone"
    #: submodules whose parameters keep the peak learning rate, outside the schedule (SimSiam's
    #: predictor); the optimizer puts them in their own param groups
    fixed_lr_modules: tuple[str, ...] = ()
    #: parameters, by full name, that keep no weight decay besides biases and norms (the
    #: references' ``no_weight_decay()``, e.g. SimMIM's [CLS] token and position tables)
    no_weight_decay: tuple[str, ...] = ()

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        """Set schedule-driven state before the forward pass; return values worth logging."""
        return {}

    def on_after_backward(self, progress: Progress) -> None:
        """Edit gradients before the optimizer step (frozen layers in their first epoch)."""

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        """Update non-gradient state after the optimizer step (EMA, centres, queues)."""


def view_group(
    batch: dict[str, torch.Tensor], group: str, method: str, count: int | None = None
) -> torch.Tensor:
    """``batch[group]``, checked to be ``(B, V, 3, S, S)`` with ``V == count`` when given."""
    if group not in batch:
        raise KeyError(f"{method} needs the view group '{group}'; the batch has {sorted(batch)}")
    views = batch[group]
    if views.ndim != 5 or (count is not None and views.shape[1] != count):
        expected = f"(B, {count}, 3, S, S)" if count is not None else "(B, V, 3, S, S)"
        raise ValueError(f"{method} expects '{group}' views {expected}, got {tuple(views.shape)}")
    return views
