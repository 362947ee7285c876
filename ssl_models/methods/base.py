"""What every method shares: the contract the training step relies on.

A method is an ``nn.Module`` whose ``forward(batch)`` returns a dict holding ``loss`` and the
terms worth logging. State that changes outside gradient descent (EMA teachers, centres, queues,
temperatures) is changed by the explicit hooks below, called by the training step, never as a
side effect of ``forward``. The step calls them in this order:
``on_step_start → forward → backward → on_after_backward → optimizer step → on_step_end``.

Two rules several methods share are declared once and applied by the base hooks:

- momentum networks: :meth:`SSLMethod.momentum_pairs` lists (online, EMA copy) pairs and
  ``momentum_schedule`` their momentum; ``on_step_end`` moves every copy towards its online
  module after the optimizer step (MoCo, BYOL, DINO, iBOT, DINOv2; solo-learn's
  ``momentum_pairs``);
- layers frozen at the start: :meth:`SSLMethod.frozen_modules` get no update during the first
  ``frozen_epochs`` (DINO's, iBOT's and DINOv2's last layer, SwAV's prototypes):
  ``on_after_backward`` drops their gradients.

A third is honoured by the training step: under ``train.sync_batchnorm``, the BatchNorm layers
of :meth:`SSLMethod.local_batchnorm_modules` keep per-worker statistics (MoCo v1/v2's key
encoder, whose substitute for synchronised BN is shuffle-BN).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.momentum import cosine_momentum, update_momentum


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
    #: EMA momentum at the first and the last step of training, joined by a half cosine (BYOL,
    #: Grill et al. 2020, arXiv:2006.07733, eq. 3); equal values keep it constant (MoCo v1/v2)
    momentum_schedule: tuple[float, float] = (1.0, 1.0)
    #: epochs from the start of training during which :meth:`frozen_modules` get no update
    frozen_epochs: float = 0.0

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online module, its EMA copy) pairs that :meth:`on_step_end` updates; none here."""
        return []

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that get no update during the first ``frozen_epochs``; none here."""
        return []

    def local_batchnorm_modules(self) -> list[nn.Module]:
        """Modules whose BatchNorm stays per worker when the rest normalises over the global
        batch (``train.sync_batchnorm``); none here."""
        return []

    def momentum(self, progress: Progress) -> float:
        """The EMA momentum m of this step, from ``momentum_schedule``."""
        return cosine_momentum(progress.fraction, *self.momentum_schedule)

    def is_frozen(self, progress: Progress) -> bool:
        """Whether :meth:`frozen_modules` are still frozen at this step; fractional epochs
        count whole steps (SwAV's 313 iterations)."""
        return progress.step < round(self.frozen_epochs * progress.steps_per_epoch)

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        """Set schedule-driven state before the forward pass; return values worth logging (the
        momentum, for methods with momentum pairs). Overrides extend this one's dict."""
        return {"momentum": self.momentum(progress)} if self.momentum_pairs() else {}

    def on_after_backward(self, progress: Progress) -> None:
        """Edit gradients before the optimizer step: while frozen, the frozen modules' gradients
        are dropped, so the optimizer skips them entirely (no update, no weight decay, no
        momentum), as DINO's ``cancel_gradients_last_layer``."""
        if self.is_frozen(progress):
            for module in self.frozen_modules():
                for p in module.parameters():
                    p.grad = None

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        """Update non-gradient state after the optimizer step: here every momentum pair's
        ``copy ← m·copy + (1 − m)·online``; overrides call this first, then update centres and
        queues."""
        pairs = self.momentum_pairs()
        if pairs:
            m = self.momentum(progress)
            for online, ema in pairs:
                update_momentum(online, ema, m)


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
