import math

import pytest
import torch

from ssl_models.losses import nt_xent_loss
from tests.distributed_helpers import run_distributed


def test_aligned_views_known_answer():
    # every positive has cosine 1, both negatives cosine 0: each anchor's term is
    # -log(e^{1/T} / (e^{1/T} + 2 e^0)) with T = 0.5; the mean over each view's anchors, summed
    # over the two views
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = 2 * math.log(1 + 2 * math.exp(-2))
    assert nt_xent_loss(z, z.clone(), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_crossed_views_known_answer():
    # positives orthogonal (cosine 0); one negative aligned (cosine 1), one orthogonal
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = -2 * math.log(1 / (1 + 1 + math.exp(2)))
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(expected, rel=1e-6)


def _reference_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """google-research/simclr objective.py add_contrastive_loss on one replica, in torch: the
    cross-entropy of [logits_ab, logits_aa] (self-similarity masked by -1e9) averaged over the
    N anchors of view a, plus the same for view b: loss = loss_a + loss_b."""
    h1 = torch.nn.functional.normalize(z1, dim=1)
    h2 = torch.nn.functional.normalize(z2, dim=1)
    n = h1.shape[0]
    masks = torch.eye(n) * 1e9
    aa, bb = h1 @ h1.T / t - masks, h2 @ h2.T / t - masks
    ab, ba = h1 @ h2.T / t, h2 @ h1.T / t
    labels = torch.arange(n)  # one_hot(range(n), 2n): the positive is column i of logits_ab
    ce = torch.nn.functional.cross_entropy
    return ce(torch.cat([ab, aa], 1), labels) + ce(torch.cat([ba, bb], 1), labels)


def test_equals_the_references_sum_of_both_views_means():
    # the reference sums its two directions (tf2/objective.py: reduce_mean(loss_a + loss_b)),
    # twice the mean over the 2N anchors of the paper's Algorithm 1; under LARS the loss's scale
    # sets weight decay's weight relative to the gradient, so it is the reference's here
    torch.manual_seed(3)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    expected = _reference_contrastive_loss(z1, z2, 0.1)
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.1), expected)


def test_general_case_matches_the_formula():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 7), torch.randn(5, 7), 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = 5
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(total / n, rel=1e-5)  # 2 × the mean


def test_symmetric_and_scale_invariant():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    loss = nt_xent_loss(z1, z2)
    assert nt_xent_loss(z2, z1).item() == pytest.approx(loss.item(), rel=1e-6)
    assert nt_xent_loss(3 * z1, 0.5 * z2).item() == pytest.approx(loss.item(), rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent_loss(torch.randn(1, 8), torch.randn(1, 8))


def _half_batch_loss_and_grad(rank: int, world: int):
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)  # the global batch, same on every rank
    half = slice(rank * 4, rank * 4 + 4)
    a, b = z1[half].clone().requires_grad_(), z2[half].clone().requires_grad_()
    loss = nt_xent_loss(a, b, 0.2, gather_distributed=True)
    loss.backward()
    # DDP averages gradients over ranks; emulate it on these leaf tensors
    return loss.item(), a.grad / world, b.grad / world


def test_two_workers_equal_one_process():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 6).requires_grad_(), torch.randn(8, 6).requires_grad_()
    loss = nt_xent_loss(z1, z2, 0.2)
    loss.backward()
    results = run_distributed(_half_batch_loss_and_grad, world=2)
    mean_loss = sum(r[0] for r in results) / 2
    assert mean_loss == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r[1] for r in results]), z1.grad)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), z2.grad)
