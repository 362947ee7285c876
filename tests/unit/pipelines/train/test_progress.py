"""The driver's view of rank 0's progress events: the bar it feeds and the run's time split."""

import io
import time

from pipelines.cli.pretrain import time_split
from pipelines.tracking.console import TrainingBar
from pipelines.train.progress import Follower


def follower() -> Follower:
    bar = TrainingBar(total_steps=20, epochs=2, stream=io.StringIO(), interval=0)
    return Follower(board=None, bar=bar)


def step(kind: str, n: int, at: float) -> dict:
    e = {"kind": kind, "step": n, "epoch": 1 + (n > 10), "loss": 1.0}
    return {**e, "images_per_sec": 100.0, "wait": 0.1, "time": at}


def test_timings_split_the_run_at_the_first_step_and_the_last_epoch():
    f = follower()
    started = time.time() - 100.0
    f.show([{"kind": "first_step", "time": started + 20.0}, step("step", 10, started + 40.0)])
    f.show([step("epoch", 10, started + 45.0), step("epoch", 20, started + 80.0)])
    t = f.timings(started)
    assert t["startup_s"] == 20.0
    assert t["training_s"] == 60.0  # the first step's end to the last epoch's end
    assert 19.5 <= t["wrap_up_s"] <= 21.0  # the last epoch's end to now
    assert t["first_step_at"] == round(started + 20.0, 3)
    assert f.bar.step == 20


def test_a_later_first_step_event_does_not_move_the_mark():
    """A restarted worker group posts its own first step: start-up ended at the first one."""
    f = follower()
    f.show([{"kind": "first_step", "time": 5.0}, {"kind": "first_step", "time": 50.0}])
    assert f.first_step_at == 5.0


def test_no_timings_without_both_marks():
    f = follower()
    assert f.timings(0.0) == {}
    f.show([{"kind": "first_step", "time": 5.0}])
    assert f.timings(0.0) == {}


def test_the_summary_line_gives_the_training_share():
    summary = {
        "wall_seconds": 200.0,
        "timings": {"startup_s": 30.0, "training_s": 150.0, "wrap_up_s": 20.0},
    }
    assert time_split(summary) == (
        "  (start-up 30 s, training 150 s = 75%, evaluation and registry 20 s)"
    )
    assert time_split({"wall_seconds": 200.0, "timings": {}}) == ""


def test_rate_and_eta_count_from_the_first_step_not_the_start_up():
    f = follower()
    f.bar.bar.start_t -= 60.0  # a minute of start-up before any step
    f.bar.bar.last_print_t -= 60.0
    f.show([{"kind": "first_step", "time": time.time()}])
    f.show([step("step", 10, time.time())])
    assert f.bar.bar.format_dict["elapsed"] < 5.0  # not the minute of start-up
    rate = f.bar.bar.format_dict["rate"]
    assert rate is None or rate > 1.0  # steps/s: 10 steps in well under a minute
