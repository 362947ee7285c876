"""When the loop asks Ray Train about draining nodes, and when it checkpoints for one."""

import time

from ray.train import PreemptionInfo

from pipelines.train.drain import DrainWatch, deadline_text


class Answers:
    """What ``ray.train.get_preemption_info`` would answer at each call, and how often it was
    called (it is a barrier across the workers: the cadence is the cost)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.answers.pop(0) if self.answers else None


def info(*nodes, deadline_ms=None):
    return PreemptionInfo(deadline_ms, {n: [i] for i, n in enumerate(nodes)})


def test_asks_only_every_n_steps_and_never_at_zero():
    ask = Answers()
    watch = DrainWatch(5, ask)
    for step in range(1, 21):
        assert watch.new_drain(step) is None
    assert ask.calls == 4  # steps 5, 10, 15, 20
    off = Answers(info("a"))
    assert all(DrainWatch(0, off).new_drain(s) is None for s in range(1, 10)) and off.calls == 0


def test_one_checkpoint_per_newly_draining_node():
    a, ab = info("a", deadline_ms=1), info("a", "b")
    watch = DrainWatch(1, Answers(None, a, a, ab, ab))
    seen = [watch.new_drain(step) for step in range(1, 6)]
    assert seen == [None, a, None, ab, None]  # node b's drain is news, a's again is not


def test_deadline_text():
    assert deadline_text(None) == "none given"
    assert deadline_text(int((time.time() + 30.4) * 1000)) in ("in 30 s", "in 29 s")
