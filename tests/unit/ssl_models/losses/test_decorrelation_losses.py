import pytest
import torch
from torch import nn

from ssl_models.losses import barlow_twins_loss, vicreg_loss, vicreg_terms
from tests.distributed_helpers import run_distributed


def reference_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """facebookresearch/barlowtwins main.py, one process: BatchNorm1d(affine=False), c / N."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).train()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag


def reference_vicreg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """facebookresearch/vicreg main_vicreg.py VICReg.forward, one process, 25/25/1."""
    repr_loss = nn.functional.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 0.0001), torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(torch.relu(1 - std_x)) / 2 + torch.mean(torch.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    off = lambda m: (m - torch.diag(torch.diagonal(m))).pow(2).sum()  # noqa: E731
    cov_loss = off(cov_x) / d + off(cov_y) / d
    return 25 * repr_loss + 25 * std_loss + cov_loss


# --- Barlow Twins ------------------------------------------------------------------------------


def test_barlow_2x2_hand_case():
    # each dimension is (1, -1) over the batch: standardised to ±s, s² = 1 / (1 + eps);
    # c = s²·[[1, -1], [1, -1]]: on-diagonal (1 - s²)² + (1 + s²)², off-diagonal 2 s⁴
    z1 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    z2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    s2 = 1 / (1 + 1e-5)
    expected = (1 - s2) ** 2 + (1 + s2) ** 2 + 0.0051 * 2 * s2**2
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(expected, rel=1e-6)


def test_barlow_identical_decorrelated_views_cost_nothing():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)


def test_barlow_matches_the_reference_with_batchnorm1d():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    expected = reference_barlow(z1, z2, 0.0051)
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(expected.item(), rel=1e-5)


def test_barlow_symmetric_and_invariant_to_per_dimension_affine_maps():
    torch.manual_seed(1)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    loss = barlow_twins_loss(z1, z2).item()
    assert barlow_twins_loss(z2, z1).item() == pytest.approx(loss, rel=1e-6)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    assert barlow_twins_loss(z1 * scale + shift, z2).item() == pytest.approx(loss, rel=1e-4)


# --- VICReg ------------------------------------------------------------------------------------


def test_vicreg_hand_cases():
    # dim 0 is (1, -1): unbiased var 2, above the hinge; dim 1 is constant: std sqrt(1e-4)
    # = 0.01, hinge 0.99; halved per branch and averaged over 2 dims: 0.495; no covariance
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    terms = vicreg_terms(z, z.clone())
    assert terms["variance"].item() == pytest.approx(0.495, rel=1e-5)
    assert terms["covariance"].item() == 0.0 and terms["invariance"].item() == 0.0
    assert vicreg_loss(z, z.clone()).item() == pytest.approx(25 * 0.495, rel=1e-5)
    # fully correlated dims: cov = [[2, 2], [2, 2]], off-diagonal squares 8, / D = 4 per branch
    # (both branches: 8); a shift by 1 leaves the statistics and costs an MSE of 1
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert vicreg_loss(z, z.clone()).item() == pytest.approx(8.0, rel=1e-6)
    assert vicreg_loss(z, z + 1).item() == pytest.approx(25 * 1.0 + 8.0, rel=1e-6)
    assert vicreg_loss(z, z + 1, sim_weight=1, var_weight=0, cov_weight=0).item() == 1.0


def test_vicreg_matches_the_reference_and_is_symmetric():
    torch.manual_seed(2)
    z1, z2 = torch.randn(16, 6) * 0.5, torch.randn(16, 6) * 0.5
    loss = vicreg_loss(z1, z2).item()
    assert loss == pytest.approx(reference_vicreg(z1, z2).item(), rel=1e-5)
    assert vicreg_loss(z2, z1).item() == pytest.approx(loss, rel=1e-6)


# --- shared ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [barlow_twins_loss, vicreg_loss])
def test_errors(loss_fn):
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(4, 8, 1), torch.randn(4, 8, 1))
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss_fn(torch.randn(1, 8), torch.randn(1, 8))


def _global_batch():
    torch.manual_seed(3)
    return torch.randn(8, 5), torch.randn(8, 5) + 0.3 * torch.randn(8, 5)


def _half_batch(rank: int, world: int):
    z1, z2 = _global_batch()
    out = []
    for fn in (barlow_twins_loss, vicreg_loss):
        a = z1[rank * 4 : rank * 4 + 4].clone().requires_grad_()
        b = z2[rank * 4 : rank * 4 + 4].clone().requires_grad_()
        loss = fn(a, b, gather_distributed=True)
        loss.backward()
        out.append((loss.item(), a.grad / world, b.grad / world))  # DDP's gradient average
    return out


def test_two_workers_equal_one_process():
    z1, z2 = _global_batch()
    results = run_distributed(_half_batch, world=2)
    for case, fn in enumerate((barlow_twins_loss, vicreg_loss)):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        # Barlow: every worker computes the global loss; VICReg: the invariance term is local,
        # so the workers' mean is the global loss
        mean_loss = sum(r[case][0] for r in results) / 2
        assert mean_loss == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(torch.cat([r[case][1] for r in results]), a.grad)
        torch.testing.assert_close(torch.cat([r[case][2] for r in results]), b.grad)
