"""The parity table's statistics: standard errors from the pooled seed spread, known answers."""

import math

import pytest

from benchmarks.peer_parity import aggregate, seed_sd


def record(method: str, seed: int, mine: float, theirs: float, random: float = 0.1) -> dict:
    side = {"wall_s": 10.0, "steps": 4, "first_step_s": 1.0, "training_share": 0.5}
    return {
        "method": method,
        "seed": seed,
        "batch": 8,
        "knn_top1_random_init": random,  # scored by the harness, outside both timings
        "sslpipe": {**side, "knn_top1": mine},
        "lightly": {**side, "knn_top1": theirs},
    }


RECORDS = [
    record("a", 0, 0.30, 0.32),
    record("a", 1, 0.32, 0.32),  # lightly's two seeds agree exactly
    record("b", 0, 0.50, 0.40),
    record("b", 1, 0.50, 0.44),
]


def test_seed_spread_pools_every_method_and_side():
    # squares about each side's mean: a/sslpipe 2e-4, b/lightly 8e-4, the others 0; 4 dof
    assert seed_sd(RECORDS) == pytest.approx(math.sqrt(1e-3 / 4))


def test_difference_in_standard_errors():
    rows = {r["method"]: r for r in aggregate(RECORDS, queries=2000)}
    sd = math.sqrt(1e-3 / 4)  # each side's mean: sd / sqrt(2); their difference: sd
    assert rows["b"]["diff_se"] == pytest.approx(round(0.08 / sd, 2))
    # lightly's agreeing seeds do not shrink a's error to sslpipe's spread alone (-1.0 SE)
    assert rows["a"]["diff_se"] == pytest.approx(round(-0.01 / sd, 2))


def test_one_seed_uses_the_binomial_error_of_the_queries():
    rows = aggregate([record("a", 0, 0.5, 0.4)], queries=100)
    se = math.hypot(math.sqrt(0.25 / 100), math.sqrt(0.24 / 100))
    assert seed_sd([record("a", 0, 0.5, 0.4)]) is None
    assert rows[0]["diff_se"] == pytest.approx(round(0.1 / se, 2))


def test_random_init_is_the_mean_over_seeds_and_old_records_still_count():
    old = record("a", 1, 0.3, 0.3)  # before the harness scored it, sslpipe's run did
    old["sslpipe"]["knn_top1_random_init"] = old.pop("knn_top1_random_init") + 0.2
    rows = aggregate([record("a", 0, 0.3, 0.3, random=0.1), old], queries=100)
    assert rows[0]["knn_random"] == pytest.approx(0.2)
