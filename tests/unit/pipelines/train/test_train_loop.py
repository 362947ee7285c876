"""The worker loop's epoch without Ray: what rank 0 logs, and a non-finite loss mid-epoch."""

import time

import pytest
import torch

from pipelines.tracking.metric_logger import MetricLogger
from pipelines.train.loop import Worker, train_epoch
from pipelines.train.step import NonFiniteLossError, TrainStep
from tests.unit.pipelines.train.test_train_step import CPU, Toy, batches, toy_config


def worker(tmp_path, method: Toy, cfg, steps_per_epoch: int) -> Worker:
    """Rank 0 of one worker, with a real metric logger that only buffers (nothing is sent)."""
    metrics_log = MetricLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "run-id")
    trainer = TrainStep(method, cfg, CPU, 2 * steps_per_epoch, steps_per_epoch)
    loop_config = {"steps_per_epoch": steps_per_epoch}
    return Worker(cfg, loop_config, 0, 1, trainer, metrics_log)


def logged(w: Worker, key: str) -> dict[int, float]:
    return {step: value for k, value, _, step in w.metrics_log.pending() if k == key}


def step_by_step(cfg, n: int) -> tuple[list[float], list[Toy]]:
    """The same n steps taken one at a time, each loss read back; the model after each."""
    torch.manual_seed(0)
    toy = Toy()
    step = TrainStep(toy, cfg, CPU, 12, 6)
    losses, weights = [], []
    for i, batch in enumerate(batches(n, size=4)):
        losses.append(float(step(batch, i).loss))
        weights.append(toy.backbone.weight.detach().clone())
    return losses, weights


def test_logged_loss_is_the_mean_of_the_steps_since_the_last_line(tmp_path):
    cfg = toy_config("train.log_every_steps=3")
    expected, _ = step_by_step(cfg, 6)
    torch.manual_seed(0)
    w = worker(tmp_path, Toy(), cfg, steps_per_epoch=6)
    epoch_loss, _ = train_epoch(w, iter(batches(6, size=4)), epoch=0)
    loss = logged(w, "loss")
    assert sorted(loss) == [3, 6]  # logging steps only
    assert loss[3] == pytest.approx(sum(expected[:3]) / 3, rel=1e-6)
    assert loss[6] == pytest.approx(sum(expected[3:]) / 3, rel=1e-6)
    assert epoch_loss == pytest.approx(sum(expected) / 6, rel=1e-6)
    # the other values are the logging step's own: the lr of step index 5, warmup 6 of 6
    assert logged(w, "lr")[6] == pytest.approx(0.3 * 4 / 256)
    assert logged(w, "momentum") == {3: 0.5, 6: 0.5}
    assert w.step == 6


def test_nan_at_a_non_logging_step_stops_before_the_weights_move(tmp_path):
    cfg = toy_config("train.log_every_steps=2")
    _, weights = step_by_step(cfg, 4)
    torch.manual_seed(0)
    toy = Toy(nan_at=5)  # the fifth forward: step index 4, between logging steps 4 and 6
    w = worker(tmp_path, toy, cfg, steps_per_epoch=6)
    with pytest.raises(NonFiniteLossError) as info:
        train_epoch(w, iter(batches(6, size=4)), epoch=0)
    assert str(info.value) == (
        "loss is nan at step 4; last good checkpoint: none yet (no checkpoint was written "
        "before this step)"
    )
    assert sorted(logged(w, "loss")) == [2, 4]
    assert toy.events[-2:] == ["start", "forward"]  # no hook, clipping or optimizer step ran
    assert torch.equal(toy.backbone.weight, weights[3])  # as the fourth step left them


def late_first(items, wait: float):
    """``items``, the first of them after ``wait`` seconds: a pipeline that is starting."""
    time.sleep(wait)
    yield from items


def test_the_wait_for_the_first_batch_is_start_up_not_the_epochs_data_wait(tmp_path):
    cfg = toy_config("train.log_every_steps=3")
    torch.manual_seed(0)
    w = worker(tmp_path, Toy(), cfg, steps_per_epoch=3)
    _, first = train_epoch(w, late_first(batches(3, size=4), 0.4), epoch=0)
    assert logged(w, "first_batch_wait_s")[0] >= 0.4
    # the epoch's and the log line's meters start when the batch arrives
    assert first["data_wait_fraction"] < 0.5
    assert logged(w, "data_wait_fraction")[3] < 0.5
    # a later epoch's wait is its own: counted
    _, second = train_epoch(w, late_first(batches(3, size=4), 0.4), epoch=1)
    assert second["data_wait_fraction"] > 0.5
    assert list(logged(w, "first_batch_wait_s")) == [0]


def test_a_resumed_attempts_first_batch_is_its_start_up_too(tmp_path):
    cfg = toy_config("train.log_every_steps=3")
    torch.manual_seed(0)
    w = worker(tmp_path, Toy(), cfg, steps_per_epoch=3)
    w.step = w.resumed_from = 3  # as resume() leaves it at an epoch's checkpoint
    _, meter = train_epoch(w, late_first(batches(3, size=4), 0.4), epoch=1)
    assert logged(w, "first_batch_wait_s")[3] >= 0.4
    assert meter["data_wait_fraction"] < 0.5
