"""iBOT's masked-patch self-distillation (Zhou et al. 2022, arXiv:2111.07832; ``iBOTLoss`` in
the reference ``main_ibot.py``), also DINOv2's patch-level loss (``iBOTPatchLoss``).

The student sees a global crop with some patches replaced by the mask token; the teacher sees
the same crop intact. At every masked position the teacher's patch distribution is the target
of the student's. The [CLS] part of iBOT is DINO's loss (:func:`ssl_models.losses.dino_loss`).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def ibot_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Masked-patch cross-entropy from the centred, sharpened teacher to the student.

    student, teacher: one (N, L, K) patch output per global crop (student: of the masked crop,
    teacher: of the intact crop), L patches, K prototypes; masks: one (N, L) bool per crop, True
    = masked for the student; center: (K,), (1, K) or (1, 1, K), the running mean of the
    teacher's patch outputs (its own centre, not the [CLS] one).

    Per crop, as the reference: targets ``softmax((t − center) / teacher_temp)`` (detached),
    ``ce = −Σ_K target · log_softmax(s / student_temp)`` per patch; each image's ce averaged
    over its masked patches (an image with none contributes 0 and still counts), then the mean
    over the N images; the loss is the mean over crops. Each crop pairs with itself only.
    """
    if not student or len(student) != len(teacher) or len(teacher) != len(masks):
        raise ValueError(
            f"ibot_loss: need one student output, teacher output and mask per global crop, got "
            f"{len(student)}, {len(teacher)} and {len(masks)}"
        )
    shape = teacher[0].shape
    if len(shape) != 3:
        raise ValueError(f"ibot_loss: patch outputs must be (N, L, K), got {tuple(shape)}")
    for c, (s, t, m) in enumerate(zip(student, teacher, masks, strict=True)):
        if s.shape != shape or t.shape != shape or m.shape != shape[:2]:
            raise ValueError(
                f"ibot_loss: crop {c}: student {tuple(s.shape)}, teacher {tuple(t.shape)} and "
                f"mask {tuple(m.shape)} must be (N, L, K), (N, L, K) and (N, L) = {tuple(shape)}"
            )
    if center.numel() != shape[2]:
        raise ValueError(
            f"ibot_loss: center must hold K={shape[2]} values, got {tuple(center.shape)}"
        )
    center = center.reshape(1, -1)
    total = 0.0
    for s, t, m in zip(student, teacher, masks, strict=True):
        m = m.bool()
        # only the masked positions enter the loss, so only they are softmaxed
        target = F.softmax((t[m] - center) / teacher_temp, dim=-1)
        total = total + masked_patch_loss(s[m], target, m, student_temp)
    return total / len(student)


def masked_patch_loss(
    student: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, student_temp: float = 0.1
) -> torch.Tensor:
    """The patch cross-entropy on the masked positions only, targets given (DINOv2 passes
    Sinkhorn-Knopp codes, :func:`ibot_loss` centred softmaxes).

    mask: (N, L) bool; student: (M, K) outputs and targets: (M, K) probabilities (detached) of
    the M = mask.sum() masked patches, in ``x[mask]`` order (image by image, patch order).
    ``−Σ_K target · log_softmax(s / student_temp)`` per patch, weighted by 1 / (masked patches
    of its image), summed, divided by N: the mean over images of each image's mean over its
    masked patches, images without any counting 0 (``iBOTPatchLoss.forward_masked``).
    """
    if mask.ndim != 2:
        raise ValueError(f"masked_patch_loss: mask must be (N, L), got {tuple(mask.shape)}")
    mask = mask.bool()
    m = int(mask.sum())
    if student.ndim != 2 or student.shape[0] != m or targets.shape != student.shape:
        raise ValueError(
            f"masked_patch_loss: student {tuple(student.shape)} and targets "
            f"{tuple(targets.shape)} must both be (M, K) with M = {m} masked patches"
        )
    ce = torch.sum(-targets.detach() * F.log_softmax(student / student_temp, dim=-1), dim=-1)
    per_image = mask.sum(dim=1, keepdim=True).clamp(min=1).to(ce.dtype)  # (N, 1)
    weights = (1.0 / per_image).expand_as(mask)[mask]  # (M,)
    return (ce * weights).sum() / mask.shape[0]
