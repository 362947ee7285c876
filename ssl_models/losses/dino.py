"""DINO's self-distillation loss and the state around it: the teacher centre and the teacher
temperature schedule (Caron et al. 2021, arXiv:2104.14294; ``DINOLoss`` in the reference
``main_dino.py``). Public so iBOT and DINOv2 reuse them (DINOv2 through
:func:`dino_loss_from_targets`, its targets being Sinkhorn-Knopp codes).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models import distributed


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Cross-entropy from the centred, sharpened teacher to the student, over crop pairs.

    student: one (N, K) output per crop, all crops (the global ones first, in the teacher's
    order, then the local ones); teacher: one (N, K) output per global crop; center: (K,) or
    (1, K), the running mean of teacher outputs.
    Teacher targets are ``softmax((t − center) / teacher_temp)``, detached; student
    log-probabilities ``log_softmax(s / student_temp)``. Every (teacher crop i, student crop v)
    pair with v ≠ i contributes ``mean_N(−Σ_K target · log_prob)``; the loss is the mean over
    those pairs, as the reference (which skips the pairs where both see the same view).
    """
    _check_crops("dino_loss", student, teacher)
    k = teacher[0].shape[1]
    if center.numel() != k:
        raise ValueError(f"dino_loss: center must hold K={k} values, got {tuple(center.shape)}")
    center = center.reshape(1, -1)
    # the targets carry no gradient, into neither the teacher nor the centre
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    return dino_loss_from_targets(student, targets, student_temp)


def dino_loss_from_targets(
    student: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], student_temp: float = 0.1
) -> torch.Tensor:
    """:func:`dino_loss` with the teacher's targets already made: one (N, K) probability row per
    sample and global crop (DINOv2's Sinkhorn-Knopp codes instead of a centred softmax).

    The same crop pairing and mean over pairs; the targets are detached.
    """
    _check_crops("dino_loss_from_targets", student, targets)
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, terms = 0.0, 0
    for i, target in enumerate(targets):
        target = target.detach()
        for v, log_prob in enumerate(log_probs):
            if v == i:
                continue
            total = total + torch.sum(-target * log_prob, dim=-1).mean()
            terms += 1
    return total / terms


def _check_crops(fn: str, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> None:
    if len(teacher) < 1 or len(student) < len(teacher):
        raise ValueError(
            f"{fn}: need at least one teacher crop and at least as many student crops "
            f"(the global crops come first), got {len(student)} student and {len(teacher)} "
            "teacher crops"
        )
    if len(student) == 1:
        raise ValueError(f"{fn}: one crop leaves no (teacher, other student crop) pair")
    shape = teacher[0].shape
    if len(shape) != 2:
        raise ValueError(f"{fn}: outputs must be (N, K), got {tuple(shape)}")
    for name, crops in (("student", student), ("teacher", teacher)):
        for i, x in enumerate(crops):
            if x.shape != shape:
                raise ValueError(
                    f"{fn}: {name} crop {i} has shape {tuple(x.shape)}, expected "
                    f"{tuple(shape)} like teacher crop 0"
                )


@torch.no_grad()
def dino_center_update(
    center: torch.Tensor, teacher_output: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    """The next centre: ``momentum · center + (1 − momentum) · mean(teacher_output)``, the mean
    taken over the rows of every worker (all-reduced, as the reference), so it is the same
    everywhere and equals one process holding the global batch.

    center: (1, K); teacher_output: (N, K), the teacher outputs of all global crops -> (1, K).
    """
    if teacher_output.ndim != 2 or teacher_output.shape[1] != center.shape[-1]:
        raise ValueError(
            f"dino_center_update: teacher_output must be (N, {center.shape[-1]}), got "
            f"{tuple(teacher_output.shape)}"
        )
    batch_center = distributed.all_reduce_mean(teacher_output.float().mean(dim=0, keepdim=True))
    return center * momentum + batch_center * (1 - momentum)


class DINOCenter(nn.Module):
    """The teacher centre as checkpointed state: a (1, K) buffer, zero at the start."""

    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_output: torch.Tensor) -> None:
        """Fold one step's teacher outputs (N, K) into the centre; call after the step."""
        self.center.copy_(dino_center_update(self.center, teacher_output, self.momentum))


def teacher_temperature(
    epoch: float, warmup_temp: float = 0.04, final_temp: float = 0.07, warmup_epochs: float = 30
) -> float:
    """The teacher temperature at (fractional) ``epoch``: linear from ``warmup_temp`` to
    ``final_temp`` over ``warmup_epochs``, then constant, evaluated per step (DINOv2's
    per-iteration schedule). DINO and iBOT step it once per epoch:
    :func:`teacher_temperature_per_epoch`."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * max(0.0, epoch) / warmup_epochs


def teacher_temperature_per_epoch(
    epoch: int, warmup_temp: float = 0.04, final_temp: float = 0.07, warmup_epochs: float = 30
) -> float:
    """The teacher temperature of (whole) ``epoch`` as DINO's and iBOT's reference code steps it:
    epoch e < n = ``warmup_epochs`` takes the e-th of n values evenly spaced from
    ``warmup_temp`` to ``final_temp`` (``linspace``, both ends included, so the final value is
    reached at epoch n − 1), later epochs ``final_temp`` (DINO §3.1 and appendix: 0.04 → 0.07
    over the first 30 epochs). ``warmup_epochs`` must be a whole number, as the reference's."""
    if warmup_epochs != int(warmup_epochs):
        raise ValueError(f"warmup_teacher_temp_epochs must be whole, got {warmup_epochs}")
    n = int(warmup_epochs)
    if epoch >= n:
        return final_temp
    if n == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * max(0, epoch) / (n - 1)
