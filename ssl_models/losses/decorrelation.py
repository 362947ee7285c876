"""Feature-decorrelation losses: Barlow Twins and VICReg.

Both need statistics of the whole batch. With ``gather_distributed`` the embeddings of every
worker are gathered WITH gradient (``ssl_models.distributed.gather``): each worker then computes
the loss of the global batch, the gather's backward sums every worker's share, and DDP's
average makes the update that of one process holding the global batch. (The Barlow Twins
reference all-reduces ``c`` without autograd, which scales its gradients by 1/world_size.)
The statistics are computed in float32 even under autocast.
"""

import torch
import torch.nn.functional as F

from ssl_models import distributed


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str, gather: bool) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name}: expected two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    n = z1.shape[0] * (distributed.world_size() if gather else 1)
    if n < 2:
        raise ValueError(f"{name}: batch statistics need at least 2 samples, got {n}")


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The D·(D-1) off-diagonal entries of a square (D, D) matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _gathered(z: torch.Tensor, gather: bool) -> torch.Tensor:
    return distributed.gather(z) if gather else z


def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambda_: float = 0.0051,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230), as ``facebookresearch/barlowtwins``.

    z1, z2: (N, D) projections of two views of N images. Each dimension is standardised over the
    batch exactly as ``BatchNorm1d(D, affine=False)`` in training mode (mean, biased variance,
    eps 1e-5); c = z1ᵀ z2 / N is their (D, D) cross-correlation; the loss is
    ``Σ_i (1 - c_ii)² + λ Σ_{i≠j} c_ij²`` (a sum, not a mean, as the reference).
    """
    _check_pair(z1, z2, "barlow_twins_loss", gather_distributed)
    with torch.autocast(z1.device.type, enabled=False):
        z1 = _gathered(z1.float(), gather_distributed)
        z2 = _gathered(z2.float(), gather_distributed)
        n = z1.shape[0]
        z1 = F.batch_norm(z1, None, None, training=True, eps=1e-5)  # BatchNorm1d(affine=False)
        z2 = F.batch_norm(z2, None, None, training=True, eps=1e-5)
        c = z1.T @ z2 / n  # (D, D)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = _off_diagonal(c).pow(2).sum()
        return on_diag + lambda_ * off_diag


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, gather_distributed: bool = False
) -> dict[str, torch.Tensor]:
    """The three unweighted VICReg terms (Bardes et al. 2022, arXiv:2105.04906), as
    ``facebookresearch/vicreg`` ``main_vicreg.py``.

    z1, z2: (N, D). ``invariance``: ``F.mse_loss(z1, z2)`` (mean over N·D) on the local batch,
    as the reference (DDP's average makes it the global mean). On the (gathered) centred batch:
    ``variance``: mean over dimensions of ``relu(1 - sqrt(var + 1e-4))`` with the unbiased
    variance, averaged over the two branches (each halved); ``covariance``: for each branch the
    off-diagonal squares of ``zᵀz / (N - 1)`` summed and divided by D, the two branches added.
    """
    _check_pair(z1, z2, "vicreg_loss", gather_distributed)
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        z1 = _gathered(z1, gather_distributed)
        z2 = _gathered(z2, gather_distributed)
        n, d = z1.shape
        z1 = z1 - z1.mean(dim=0)
        z2 = z2 - z2.mean(dim=0)
        std1 = torch.sqrt(z1.var(dim=0) + 1e-4)
        std2 = torch.sqrt(z2.var(dim=0) + 1e-4)
        variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
        cov1 = z1.T @ z1 / (n - 1)  # (D, D)
        cov2 = z2.T @ z2 / (n - 1)
        covariance = _off_diagonal(cov1).pow(2).sum() / d + _off_diagonal(cov2).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, arXiv:2105.04906): ``sim_weight·invariance +
    var_weight·variance + cov_weight·covariance``, the terms of :func:`vicreg_terms`.

    z1, z2: (N, D) expander outputs of two views of N images. Returns a scalar.
    """
    t = vicreg_terms(z1, z2, gather_distributed)
    return sim_weight * t["invariance"] + var_weight * t["variance"] + cov_weight * t["covariance"]
