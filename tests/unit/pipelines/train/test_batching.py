"""The global batch's cut over a changing worker count, and the config rules that guard it."""

import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError
from pipelines.train.batching import (
    BatchPlan,
    batch_plan,
    describe_workers,
    steps_per_epoch,
    workable_batch,
    worker_range,
)


@pytest.mark.parametrize("world, per_worker", [(1, 256), (2, 128), (4, 64), (8, 32)])
def test_the_global_batch_is_the_same_at_every_worker_count(world, per_worker):
    plan = batch_plan(256, world)
    assert plan == BatchPlan(world, per_worker, 1)
    assert plan.world * plan.per_worker == 256


def test_fixed_accumulation_keeps_the_rows_of_one_forward_over_all_workers():
    # a gathered loss (SimCLR's negatives) sees world × micro rows: 256 / 2 at every count
    for world in (1, 2, 4):
        plan = batch_plan(256, world, accumulate_steps=2)
        assert plan.accumulate == 2 and plan.world * plan.micro == 128


def test_a_micro_batch_cap_makes_a_smaller_group_accumulate_more():
    # 240 rows: 4 workers take 60 each, under the cap of 64; 2 take 120, cut in 2 of 60;
    # 1 takes 240: ceil(240 / 64) = 4 parts of 60
    assert batch_plan(240, 4, micro_batch_size=64) == BatchPlan(4, 60, 1)
    assert batch_plan(240, 2, micro_batch_size=64) == BatchPlan(2, 120, 2)
    assert batch_plan(240, 1, micro_batch_size=64) == BatchPlan(1, 240, 4)
    # the fewest parts that both divide the share and stay under the cap: 112 rows under 50
    # need at least 3 parts, 3 does not divide 112, 4 parts of 28 do
    assert batch_plan(224, 2, micro_batch_size=50) == BatchPlan(2, 112, 4)
    # a prime share can only fall apart into single rows
    assert batch_plan(7, 1, micro_batch_size=3) == BatchPlan(1, 7, 7)


def test_a_batch_that_does_not_split_names_the_key():
    with pytest.raises(ValueError, match=r"train.batch_size=256 does not divide evenly over 3"):
        batch_plan(256, 3)
    with pytest.raises(ValueError, match=r"into train.accumulate_steps=3 micro-batches"):
        batch_plan(256, 2, accumulate_steps=3)


def test_steps_per_epoch_do_not_depend_on_the_worker_count():
    # what each of W workers gets from Ray Data's equal split, in batches of B / W
    rows, batch = 50_000, 256
    for world in (1, 2, 4, 8):
        per_worker_rows = rows // world
        assert per_worker_rows // (batch // world) == steps_per_epoch(rows, batch) == 195


def test_workable_batch_divides_over_the_whole_range():
    assert workable_batch(256, 2, 4) == 264  # lcm(2, 3, 4) = 12
    assert workable_batch(256, 2, 4, accumulate_steps=2) == 264  # 24 × 11
    assert workable_batch(256, 1, 2) == 256


def test_worker_text_and_range():
    assert worker_range(3) == (3, 3) and worker_range((1, 4)) == (1, 4)
    assert describe_workers(1) == "1 worker" and describe_workers(2) == "2 workers"
    assert describe_workers((1, 4)) == "1-4 workers (elastic)"


# --- train.workers in the config ------------------------------------------------------------


def test_workers_take_a_count_or_a_range():
    assert load_config(overrides=parse_set(["train.workers=4"])).train.workers == 4
    cfg = load_config(overrides=parse_set(["train.workers=[1, 4]", "train.batch_size=240"]))
    assert cfg.train.workers == (1, 4)


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["train.workers=[4, 2]"], r"'train.workers': \[min, max\] with min <= max, got \[4, 2\]"),
        (["train.workers=[0, 2]"], r"'train.workers': must be at least 1, got 0"),
        (["train.workers=[1, 2, 3]"], r"'train.workers': .* does not match"),
        (
            ["train.workers=[2, 4]", "train.batch_size=256"],
            r"'train.batch_size': 256 does not divide evenly over 3 workers, which "
            r"train.workers=\[2, 4\] lets Ray Train start with.* e.g. 264",
        ),
        (
            ["train.workers=[1, 2]", "train.batch_size=64", "train.accumulate_steps=64"],
            r"over 2 workers × train.accumulate_steps=64",
        ),
        (
            ["train.micro_batch_size=16", "train.accumulate_steps=2"],
            r"'train.micro_batch_size': .* leave train.accumulate_steps at 1",
        ),
        (["train.micro_batch_size=-1"], r"'train.micro_batch_size': must not be negative"),
        (["train.drain_check_steps=-5"], r"'train.drain_check_steps': must not be negative"),
    ],
)
def test_bad_worker_settings_name_the_key(pairs, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=parse_set(pairs))


def test_a_micro_batch_cap_lifts_only_the_accumulation_rule():
    # 64 rows over 1 or 2 workers in micro-batches of at most 8: no accumulate_steps to fit
    cfg = load_config(
        overrides=parse_set(
            ["train.workers=[1, 2]", "train.batch_size=64", "train.micro_batch_size=8"]
        )
    )
    assert cfg.train.micro_batch_size == 8
    with pytest.raises(ConfigError, match=r"does not divide evenly over 3 workers"):
        load_config(
            overrides=parse_set(
                ["train.workers=[2, 3]", "train.batch_size=64", "train.micro_batch_size=8"]
            )
        )
