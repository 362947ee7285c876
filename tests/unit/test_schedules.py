"""Shared per-step schedules against values computed by hand from the papers' formulas."""

import math

import pytest
import torch
from torch import nn

from ssl_models.schedules import (
    cancel_gradients,
    cosine,
    is_frozen,
    linear_warmup,
    momentum_cosine,
    warmup_cosine,
)


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)  # halfway: the mean
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(150, 100, 0.04, 0.4) == pytest.approx(0.4)  # clamped after the end
    # a quarter of the way: end + (start - end)(1 + cos(pi/4))/2
    assert cosine(25, 100, 1.0, 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_warmup_then_cosine():
    # warmup of 10 steps to 1.0: step 0 already takes 1/10, step 9 the full peak
    assert warmup_cosine(0, 110, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 110, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 110, 10, 1.0, 0.0) == pytest.approx(1.0)  # cosine starts at peak
    assert warmup_cosine(60, 110, 10, 1.0, 0.0) == pytest.approx(0.5)  # halfway down
    assert warmup_cosine(110, 110, 10, 1.0, 0.2) == pytest.approx(0.2)
    assert warmup_cosine(5, 100, 0, 1.0, 0.0) == pytest.approx(cosine(5, 100, 1.0, 0.0))


def test_byol_momentum_formula():
    base, total = 0.996, 1000
    for k in (0, 1, 250, 500, 999, 1000):
        expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2  # BYOL section 3.2
        assert momentum_cosine(k, total, base) == pytest.approx(expected, abs=1e-12)
    assert momentum_cosine(0, total, base) == pytest.approx(0.996)
    assert momentum_cosine(total, total, base) == pytest.approx(1.0)


def test_dino_teacher_temperature_warmup():
    # 0.04 -> 0.07 over 30 "epochs" of 10 steps: linear, then flat
    assert linear_warmup(0, 300, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(150, 300, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(300, 300, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(1000, 300, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(0, 0, 0.04, 0.07) == pytest.approx(0.07)  # no warmup


def test_frozen_period_and_cancelled_gradients_skip_the_optimizer():
    assert is_frozen(0, 10) and is_frozen(9, 10) and not is_frozen(10, 10)
    assert not is_frozen(0, 0)
    layer = nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    layer(torch.ones(1, 3)).sum().backward()
    cancel_gradients(layer)
    assert all(p.grad is None for p in layer.parameters())
    opt.step()
    assert torch.equal(layer.weight, before)  # no update, not even weight decay
