"""Shared per-step schedules against values computed by hand from the papers' formulas."""

import math

import pytest

from ssl_models.schedules import cosine, warmup_cosine


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
