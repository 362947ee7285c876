"""Context-based pretext-task losses: classification of a transformation the data side drew.

Each is the mean cross-entropy over the N examples, as the papers train them (a softmax over
the task's classes). They differ in their number of classes and in what the class means.
"""

import torch
import torch.nn.functional as F


def _classification_loss(
    name: str, logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None
) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"{name}: expected logits (N, C), got {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"{name}: expected {num_classes} classes, got logits with {logits.shape[1]}"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"{name}: expected targets (N,) = ({logits.shape[0]},), got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{name}: targets must be integer class indices, got {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(
            f"{name}: targets must lie in [0, {logits.shape[1] - 1}], got "
            f"[{int(targets.min())}, {int(targets.max())}] (do the model's classes match the "
            "view recipe's?)"
        )
    return F.cross_entropy(logits.float(), targets.long())


def rotation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RotNet (Gidaris et al. 2018, arXiv:1803.07728): which of 0°, 90°, 180°, 270° was applied.

    logits: (N, 4); targets: (N,) in 0..3, k meaning a rotation by k·90°. Mean cross-entropy.
    """
    return _classification_loss("rotation_loss", logits, targets, 4)


def relative_loc_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Relative patch location (Doersch et al. 2015, arXiv:1505.05192): where the second patch
    of a pair sits among the 8 neighbours of the first (the centre of a 3×3 grid).

    logits: (N, 8); targets: (N,) in 0..7, the neighbours in row-major order with the centre
    skipped (0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, ...).
    Mean cross-entropy.
    """
    return _classification_loss("relative_loc_loss", logits, targets, 8)


def jigsaw_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Jigsaw puzzles (Noroozi & Favaro 2016, arXiv:1603.09246): which permutation of a fixed
    set shuffled the 3×3 tiles.

    logits: (N, P) over the P permutations of the set; targets: (N,) in 0..P-1. Mean
    cross-entropy.
    """
    return _classification_loss("jigsaw_loss", logits, targets, None)
