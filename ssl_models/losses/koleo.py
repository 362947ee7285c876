"""The KoLeo regulariser (Sablayrolles et al. 2019, arXiv:1806.03198), as DINOv2 uses it
(Oquab et al. 2024, arXiv:2304.07193; ``KoLeoLoss`` in the reference ``dinov2/loss``)."""

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: push each sample away from its nearest neighbour.

    x: (N, D), N >= 2, L2-normalised inside (eps ``eps``). For each row its nearest other row by
    inner product (the nearest in distance on the sphere; chosen without gradient), then
    ``−mean_N log(‖x_i − x_nn(i) + eps‖₂ + eps)``, the reference's
    ``PairwiseDistance(eps=1e-8)``. In float32 whatever the autocast. The reference applies it
    per worker (its local batch), not over the global batch, and so does DINOv2 here.
    """
    if x.ndim != 2:
        raise ValueError(f"koleo_loss: expected (N, D), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"koleo_loss: needs at least 2 samples for a neighbour, got {x.shape[0]}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.T
            # never its own neighbour (the reference fills -1, which a tie could still pick)
            dots.fill_diagonal_(float("-inf"))
            nearest = dots.argmax(dim=1)
        distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)  # (N,)
        return -torch.log(distances + eps).mean()


def koleo_loss_per_crop(x: torch.Tensor, n_crops: int) -> torch.Tensor:
    """KoLeo summed over crops, as DINOv2 applies it to its global crops.

    x: (n_crops·N, D), crop-major (the first N rows are every image's first crop). Each crop's N
    rows get their own :func:`koleo_loss`: across crops an image's other view would be its
    nearest neighbour, and the term would push the two views of one image apart.
    """
    if x.ndim != 2 or n_crops < 1 or x.shape[0] % n_crops:
        raise ValueError(
            f"koleo_loss_per_crop: expected ({n_crops}·N, D) crop-major, got {tuple(x.shape)}"
        )
    return torch.stack([koleo_loss(crop) for crop in x.chunk(n_crops)]).sum()
