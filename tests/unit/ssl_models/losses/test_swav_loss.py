import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.losses import sinkhorn, swav_loss
from tests.distributed_helpers import run_distributed


def reference_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """A line-by-line transcription of main_swav.py's distributed_sinkhorn, one process."""
    q = torch.exp(out / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def test_sinkhorn_hand_case_equipartition_splits_a_shared_favourite():
    # both samples prefer prototype 0 equally; one iteration at ε = 1: the rows (prototypes)
    # are rescaled to 1/2 each, so each sample's code becomes (1/2, 1/2), not (e, 1)/(e + 1)
    codes = sinkhorn(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), epsilon=1.0, iterations=1)
    torch.testing.assert_close(codes, torch.full((2, 2), 0.5))


def test_sinkhorn_hand_case_distinct_favourites_keep_the_softmax():
    # already balanced: one iteration leaves softmax(scores / ε), here (e, 1) / (e + 1)
    codes = sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=1)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)
    torch.testing.assert_close(codes, torch.tensor([[a, b], [b, a]]))


def test_sinkhorn_matches_the_reference_and_sums_as_it_should():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(12, 8), dim=1) @ F.normalize(torch.randn(5, 8), dim=1).T
    codes = sinkhorn(scores)
    torch.testing.assert_close(codes, reference_sinkhorn(scores.double(), 0.05, 3).float())
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12))  # each sample: an assignment
    # many iterations reach the equipartition: every prototype carries N / K samples
    balanced = sinkhorn(scores, iterations=200)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((5,), 12 / 5), rtol=0, atol=1e-3)
    assert not balanced.requires_grad and not codes.requires_grad


def test_sinkhorn_is_stable_where_the_linear_domain_overflows():
    scores = torch.tensor([[50.0, 0.0, -10.0], [0.0, 40.0, 5.0]])
    assert not torch.isfinite(reference_sinkhorn(scores, 0.05, 3)).all()
    codes = sinkhorn(scores)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(2))


def test_sinkhorn_errors():
    with pytest.raises(ValueError, match=r"expected scores \(N, K\)"):
        sinkhorn(torch.randn(5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        sinkhorn(torch.randn(1, 4))
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn(torch.randn(4, 4), epsilon=0.0)


def test_swav_loss_hand_case_is_the_binary_entropy():
    # both crops score [[1, 0], [0, 1]]; at ε = T = 1 and one iteration the codes are the
    # predicted softmax (a, b), so each swapped term is the entropy -(a log a + b log b)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = swav_loss([s, s.clone()], n_assign=2, temperature=1.0, epsilon=1.0, iterations=1)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)
    assert loss.item() == pytest.approx(-(a * math.log(a) + b * math.log(b)), rel=1e-6)


def multicrop_formula(scores, n_assign, temperature, queue=None):
    total = 0.0
    for i in range(n_assign):
        out = scores[i] if queue is None else torch.cat([queue[i], scores[i]])
        q = reference_sinkhorn(out.double(), 0.05, 3)[-scores[i].shape[0] :].float()
        others = [v for v in range(len(scores)) if v != i]
        total += sum(
            -(q * F.log_softmax(scores[v] / temperature, dim=1)).sum(1).mean() for v in others
        ) / len(others)
    return total / n_assign


def test_swav_loss_multicrop_and_queue_match_the_reference_formula():
    torch.manual_seed(1)
    protos = F.normalize(torch.randn(6, 8), dim=1)
    scores = [F.normalize(torch.randn(4, 8), dim=1) @ protos.T for _ in range(5)]
    queue = [F.normalize(torch.randn(10, 8), dim=1) @ protos.T for _ in range(2)]
    loss = swav_loss(scores, n_assign=2)
    assert loss.item() == pytest.approx(multicrop_formula(scores, 2, 0.1).item(), rel=1e-5)
    with_queue = swav_loss(scores, n_assign=2, queue_scores=queue)
    expected = multicrop_formula(scores, 2, 0.1, queue).item()
    assert with_queue.item() == pytest.approx(expected, rel=1e-5)
    assert with_queue.item() != pytest.approx(loss.item(), rel=1e-3)  # the queue changes codes


def test_hard_codes_are_the_one_hot_of_the_soft_codes_argmax():
    torch.manual_seed(4)
    protos = F.normalize(torch.randn(6, 8), dim=1)
    s0, s1 = (F.normalize(torch.randn(5, 8), dim=1) @ protos.T for _ in range(2))
    loss = swav_loss([s0, s1], n_assign=1, hard=True)
    picked = sinkhorn(s0).argmax(dim=1)  # each sample's code becomes its favourite prototype
    expected = -F.log_softmax(s1 / 0.1, dim=1)[torch.arange(5), picked].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(swav_loss([s0, s1], n_assign=1).item(), rel=1e-3)


def test_swav_loss_is_symmetric_in_the_coded_crops():
    torch.manual_seed(2)
    s1, s2 = torch.randn(6, 5), torch.randn(6, 5)
    assert swav_loss([s1, s2]).item() == pytest.approx(swav_loss([s2, s1]).item(), rel=1e-6)


def test_codes_carry_no_gradient():
    # with one coded crop of two, the coded crop only supplies targets: no gradient reaches it
    s1 = torch.randn(6, 5, requires_grad=True)
    s2 = torch.randn(6, 5, requires_grad=True)
    swav_loss([s1, s2], n_assign=1).backward()
    assert s1.grad is None or torch.count_nonzero(s1.grad) == 0
    assert torch.count_nonzero(s2.grad) > 0


def test_swav_loss_errors():
    with pytest.raises(ValueError, match="at least 2"):
        swav_loss([torch.randn(4, 3)])
    with pytest.raises(ValueError, match=r"crop 1 scores have shape \(4, 2\)"):
        swav_loss([torch.randn(4, 3), torch.randn(4, 2)])
    with pytest.raises(ValueError, match=r"n_assign=3 must be in \[1, 2\]"):
        swav_loss([torch.randn(4, 3), torch.randn(4, 3)], n_assign=3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        swav_loss([torch.randn(1, 3), torch.randn(1, 3)])
    with pytest.raises(ValueError, match="expected 2 queue score tensors"):
        swav_loss([torch.randn(4, 3), torch.randn(4, 3)], queue_scores=[torch.randn(5, 3)])


def _global_batch():
    torch.manual_seed(3)
    protos = F.normalize(torch.randn(5, 8), dim=1)
    scores = [F.normalize(torch.randn(8, 8), dim=1) @ protos.T for _ in range(3)]
    queue = [F.normalize(torch.randn(6, 8), dim=1) @ protos.T for _ in range(2)]
    return scores, queue


def _half_batch(rank: int, world: int):
    scores, queue = _global_batch()
    out = []
    for q in (None, queue):  # without and with a queue (the same on every worker)
        local = [s[rank * 4 : rank * 4 + 4].clone().requires_grad_() for s in scores]
        loss = swav_loss(local, n_assign=2, queue_scores=q, gather_distributed=True)
        loss.backward()
        # DDP averages gradients over ranks; emulate it on these leaf tensors
        out.append((loss.item(), [s.grad / world for s in local]))
    return out


def test_two_workers_equal_one_process():
    scores, queue = _global_batch()
    results = run_distributed(_half_batch, world=2)
    for case, q in enumerate((None, queue)):
        full = [s.clone().requires_grad_() for s in scores]
        loss = swav_loss(full, n_assign=2, queue_scores=q)
        loss.backward()
        mean_loss = sum(r[case][0] for r in results) / 2
        assert mean_loss == pytest.approx(loss.item(), rel=1e-5)
        for v in range(3):
            grads = torch.cat([r[case][1][v] for r in results])
            torch.testing.assert_close(grads, full[v].grad, rtol=1e-4, atol=1e-6)
