"""MoCo v1/v2's InfoNCE against a queue and MoCo v3's in-batch loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.losses import info_nce_loss, moco_v3_loss
from tests.distributed_helpers import run_distributed


def test_info_nce_known_answer():
    # positive cosine 1, negatives cosine 0 and -1, T = 0.5: logits [2, 0, -2], target 0
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    queue = torch.tensor([[0.0, 3.0], [-1.0, 0.0]])
    expected = math.log(1 + math.exp(-2) + math.exp(-4))
    assert info_nce_loss(q, k, queue, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_matches_the_formula():
    torch.manual_seed(0)
    q, k, queue, t = torch.randn(4, 6), torch.randn(4, 6), torch.randn(10, 6), 0.2
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    total = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / t)
        neg = sum(math.exp(float(qn[i] @ un[j]) / t) for j in range(10))
        total += -math.log(pos / (pos + neg))
    assert info_nce_loss(q, k, queue, t).item() == pytest.approx(total / 4, rel=1e-5)


def test_info_nce_stops_the_gradient_into_keys_and_queue():
    q = torch.randn(3, 5, requires_grad=True)
    k = torch.randn(3, 5, requires_grad=True)
    queue = torch.randn(7, 5, requires_grad=True)
    info_nce_loss(q, k, queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_info_nce_errors():
    with pytest.raises(ValueError, match="same shape"):
        info_nce_loss(torch.randn(4, 8), torch.randn(3, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"queue must be \(K >= 1, 8\)"):
        info_nce_loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 7))
    with pytest.raises(ValueError, match="queue must be"):
        info_nce_loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(0, 8))


def test_info_nce_batch_of_one_is_valid():
    # the negatives come from the queue, so one query is a complete problem
    q, k, queue = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0]])
    # logits [0, 1/T] with T = 1: -log(1 / (1 + e))
    assert info_nce_loss(q, k, queue, 1.0).item() == pytest.approx(math.log(1 + math.e))


def test_moco_v3_known_answer_includes_the_2t_factor():
    # aligned pairs, orthogonal negatives: logits [[1/T, 0], [0, 1/T]]
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for t in (0.5, 1.0):
        expected = math.log(1 + math.exp(-1 / t)) * 2 * t
        assert moco_v3_loss(z, 3 * z, t).item() == pytest.approx(expected, rel=1e-6)


def test_moco_v3_matches_the_formula():
    torch.manual_seed(1)
    q, k, t = torch.randn(5, 4), torch.randn(5, 4), 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(5):
        denom = sum(math.exp(float(qn[i] @ kn[j]) / t) for j in range(5))
        total += -math.log(math.exp(float(qn[i] @ kn[i]) / t) / denom)
    assert moco_v3_loss(q, k, t).item() == pytest.approx(total / 5 * 2 * t, rel=1e-5)


def test_moco_v3_symmetrised_sum_is_symmetric_in_the_views():
    torch.manual_seed(2)
    q1, q2, k1, k2 = (torch.randn(6, 8) for _ in range(4))
    forward = moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)
    swapped = moco_v3_loss(q2, k1) + moco_v3_loss(q1, k2)
    assert forward.item() == pytest.approx(swapped.item())
    # and invariant to the scale of either argument (both are L2-normalised)
    assert moco_v3_loss(5 * q1, 0.1 * k2).item() == pytest.approx(
        moco_v3_loss(q1, k2).item(), rel=1e-5
    )


def test_moco_v3_errors():
    with pytest.raises(ValueError, match="same shape"):
        moco_v3_loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="at least 2"):
        moco_v3_loss(torch.randn(1, 8), torch.randn(1, 8))


def _moco_v3_half_batch(rank: int, world: int):
    torch.manual_seed(0)
    q, k = torch.randn(8, 6), torch.randn(8, 6)  # the global batch, same on every rank
    half = slice(rank * 4, rank * 4 + 4)
    a, b = q[half].clone().requires_grad_(), k[half].clone().requires_grad_()
    loss = moco_v3_loss(a, b, 0.2, gather_distributed=True)
    loss.backward()
    # DDP averages gradients over ranks; emulate it on these leaf tensors
    return loss.item(), a.grad / world, b.grad / world


def test_moco_v3_two_workers_equal_one_process():
    torch.manual_seed(0)
    q, k = torch.randn(8, 6).requires_grad_(), torch.randn(8, 6).requires_grad_()
    loss = moco_v3_loss(q, k, 0.2)
    loss.backward()
    results = run_distributed(_moco_v3_half_batch, world=2)
    assert sum(r[0] for r in results) / 2 == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r[1] for r in results]), q.grad)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), k.grad)
