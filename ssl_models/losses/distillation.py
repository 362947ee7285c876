"""Self-distillation losses without negatives: BYOL's and SimSiam's prediction losses.

Both regress an online prediction ``p`` onto a target projection ``z`` of another view and stop
the gradient through ``z``. They take one direction; the methods symmetrise over the two views
as the papers do.
"""

import torch
import torch.nn.functional as F


def _check_pair(p: torch.Tensor, z: torch.Tensor, name: str) -> None:
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(
            f"{name}: expected prediction and target of the same (N, D) shape, got "
            f"{tuple(p.shape)} and {tuple(z.shape)}"
        )
    if p.shape[0] < 1:
        raise ValueError(f"{name}: empty batch")


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised regression loss (Grill et al. 2020, arXiv:2006.07733, eq. 2).

    p: (N, D) online predictions of one view; z: (N, D) target projections of the other view,
    detached here. Returns the mean over N of ``‖p̂ − ẑ‖² = 2 − 2·cos(p, z)``, in [0, 4]. The
    method adds the loss with the views swapped (the paper's L + L̃), as the reference sums the
    two per-sample losses before averaging. A batch of one is valid: the loss is per sample.
    """
    _check_pair(p, z, "byol_loss")
    # normalise-then-dot as the reference's l2_normalize (eps on the norm, not on the product)
    cos = (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)  # (N,)
    return (2 - 2 * cos).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative cosine similarity (Chen & He 2021, arXiv:2011.10566, eq. 1).

    p: (N, D) predictions of one view; z: (N, D) projections of the other view, detached here
    (the stop-gradient the paper shows to be essential). Returns the mean over N of
    ``−cos(p, z)``, in [−1, 1]. The method averages the two directions (eq. 2's ½ D(p1, z2) +
    ½ D(p2, z1)). A batch of one is valid: the loss is per sample.
    """
    _check_pair(p, z, "simsiam_loss")
    # nn.CosineSimilarity, as the reference
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
