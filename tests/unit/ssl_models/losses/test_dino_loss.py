"""DINO's loss, centre and teacher-temperature schedule."""

import math

import pytest
import torch

from ssl_models.losses import (
    DINOCenter,
    dino_center_update,
    dino_loss,
    teacher_temperature,
    teacher_temperature_per_epoch,
)
from tests.distributed_helpers import run_distributed

L3 = math.log(3.0)


def _ce(target: list[float], log_prob: list[float]) -> float:
    return -sum(t * lp for t, lp in zip(target, log_prob, strict=True))


def test_known_answer_two_global_one_local():
    # temperatures 1, centre 0: targets softmax([0, 0]) = [.5, .5], softmax([ln 3, 0]) = [.75, .25]
    t0, t1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[L3, 0.0]])
    s0, s1, s2 = t0.clone(), t1.clone(), torch.tensor([[0.0, L3]])
    half, q = [math.log(0.5)] * 2, [math.log(0.75), math.log(0.25)]
    rev = q[::-1]
    # pairs (teacher i, student v), v != i: (0,1), (0,2), (1,0), (1,2)
    terms = [
        _ce([0.5, 0.5], q),
        _ce([0.5, 0.5], rev),
        _ce([0.75, 0.25], half),
        _ce([0.75, 0.25], rev),
    ]
    loss = dino_loss([s0, s1, s2], [t0, t1], torch.zeros(2), 1.0, 1.0)
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_centre_and_temperatures_enter_as_the_reference():
    t0, t1 = torch.tensor([[L3, 0.0]]), torch.tensor([[2 * L3, L3]])
    s0, s1 = torch.tensor([[0.0, 0.2]]), torch.tensor([[0.3, 0.0]])
    center = torch.tensor([[L3, 0.0]])
    # teacher targets: softmax(([0, 0]) / 0.5) = [.5, .5]; softmax(([ln 3, ln 3]) / 0.5) = [.5, .5]
    # student: log_softmax(s / 0.1)
    lp = [torch.log_softmax(s / 0.1, dim=-1)[0].tolist() for s in (s0, s1)]
    expected = (_ce([0.5, 0.5], lp[1]) + _ce([0.5, 0.5], lp[0])) / 2
    loss = dino_loss([s0, s1], [t0, t1], center, student_temp=0.1, teacher_temp=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_swapping_the_global_crops_changes_nothing():
    torch.manual_seed(0)
    s = [torch.randn(4, 6) for _ in range(4)]
    t = [torch.randn(4, 6) for _ in range(2)]
    c = torch.randn(1, 6)
    swapped = dino_loss([s[1], s[0], s[2], s[3]], [t[1], t[0]], c)
    assert swapped.item() == pytest.approx(dino_loss(s, t, c).item(), rel=1e-6)


def test_no_gradient_into_the_teacher_or_the_centre():
    s = [torch.randn(3, 5, requires_grad=True) for _ in range(3)]
    t = [torch.randn(3, 5, requires_grad=True) for _ in range(2)]
    c = torch.randn(1, 5, requires_grad=True)
    dino_loss(s, t, c).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t) and c.grad is None


def test_errors():
    a = torch.randn(4, 6)
    with pytest.raises(ValueError, match="student crop 1 has shape"):
        dino_loss([a, torch.randn(4, 5)], [a], torch.zeros(6))
    with pytest.raises(ValueError, match="teacher crop 1 has shape"):
        dino_loss([a, a], [a, torch.randn(3, 6)], torch.zeros(6))
    with pytest.raises(ValueError, match="center must hold K=6"):
        dino_loss([a, a], [a], torch.zeros(5))
    with pytest.raises(ValueError, match="at least as many student crops"):
        dino_loss([a], [a, a], torch.zeros(6))
    with pytest.raises(ValueError, match="one crop leaves no"):
        dino_loss([a], [a], torch.zeros(6))
    with pytest.raises(ValueError, match=r"must be \(N, K\)"):
        dino_loss([torch.randn(6), torch.randn(6)], [torch.randn(6)], torch.zeros(6))


def test_batch_of_one_is_valid():
    # the loss is per sample; with identical crops and a uniform teacher it is log K
    x = torch.zeros(1, 4)
    assert dino_loss([x, x], [x, x], torch.zeros(4)).item() == pytest.approx(math.log(4))


def test_centre_update_is_an_ema_of_the_batch_mean():
    out = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    c = torch.tensor([[10.0, 10.0]])
    torch.testing.assert_close(dino_center_update(c, out, 0.9), torch.tensor([[9.2, 9.4]]))
    torch.testing.assert_close(dino_center_update(c, out, 0.0), torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(dino_center_update(c, out, 1.0), c)
    with pytest.raises(ValueError, match=r"teacher_output must be \(N, 2\)"):
        dino_center_update(c, torch.randn(3, 5))


def test_centre_module_is_checkpointed_state():
    centre = DINOCenter(3, momentum=0.5)
    centre.update(torch.tensor([[2.0, 4.0, 6.0]]))
    torch.testing.assert_close(centre.center, torch.tensor([[1.0, 2.0, 3.0]]))
    restored = DINOCenter(3)
    restored.load_state_dict(centre.state_dict())
    torch.testing.assert_close(restored.center, centre.center)


def _centre_half_batch(rank: int, world: int):
    torch.manual_seed(0)
    out = torch.randn(8, 5)  # the global batch's teacher outputs, same on every rank
    centre = DINOCenter(5, momentum=0.9)
    centre.center.fill_(0.5)
    centre.update(out[rank * 4 : rank * 4 + 4])
    return centre.center


def test_centre_two_workers_equal_one_process():
    torch.manual_seed(0)
    out = torch.randn(8, 5)
    centre = DINOCenter(5, momentum=0.9)
    centre.center.fill_(0.5)
    centre.update(out)
    for got in run_distributed(_centre_half_batch, world=2):
        torch.testing.assert_close(got, centre.center)


def test_teacher_temperature_warmup():
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature(0.5, 0.04, 0.07, 30) == pytest.approx(0.0405)  # per step
    assert teacher_temperature(30, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(99, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)


def test_teacher_temperature_per_epoch_is_the_references_linspace():
    # main_dino.py: concatenate(linspace(warmup, final, n), ones(epochs - n) * final)[epoch]
    for n in (1, 2, 3, 30):
        schedule = [0.04 + (0.07 - 0.04) * e / (n - 1) for e in range(n)] if n > 1 else [0.04]
        for epoch in range(n + 3):
            expected = schedule[epoch] if epoch < n else 0.07
            assert teacher_temperature_per_epoch(epoch, 0.04, 0.07, n) == pytest.approx(expected)
    assert teacher_temperature_per_epoch(1, 0.04, 0.07, 2) == pytest.approx(0.07)
    assert teacher_temperature_per_epoch(0, 0.04, 0.07, 0) == pytest.approx(0.07)  # no warm-up
    with pytest.raises(ValueError, match="whole"):
        teacher_temperature_per_epoch(0, 0.04, 0.07, 2.5)
