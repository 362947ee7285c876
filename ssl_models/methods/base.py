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
