"""Recovery under TorchTrainer: a worker process killed mid-epoch, the run resumed from its last
(mid-epoch) checkpoint, and the MLflow history it leaves; a non-finite loss names its checkpoint."""

import collections

import pytest
from mlflow import MlflowClient

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import to_dict
from pipelines.data.stream.source import training_dataset
from pipelines.data.synthetic import ensure_embedded
from pipelines.tracking import runs as tracking
from pipelines.tracking.metric_logger import MetricLogger
from pipelines.train.checkpoint import load_state
from pipelines.train.trainer import build_trainer

pytestmark = pytest.mark.integration


def config(tmp_path, *pairs):
    return load_config(
        overrides=parse_set(
            [
                "backbone.width=0.125",
                "method_args.proj_hidden_dim=64",
                "train.batch_size=32",
                "train.workers=2",
                "train.cpus_per_worker=1",
                "train.log_every_steps=1",
                f"train.storage={tmp_path / 'runs'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "tracking.flush_seconds=0.2",
                "data.embedded_train_per_class=8",
                "data.embedded_test_per_class=2",
                f"data.cache_dir={tmp_path / 'data'}",
                *pairs,
            ]
        )
    )


def fit(cfg, tmp_path, name, run_id=""):
    train_path, _ = ensure_embedded(cfg.data.cache_dir, 8, 2)
    # as pretrain builds it: one execution streams every epoch, so a restarted worker group
    # reads a new execution from a resumed mid-run step
    ds, manifest = training_dataset(cfg, train_path, epochs=cfg.train.epochs)
    storage = str(tmp_path / "runs")
    loop_config = {
        "cfg": to_dict(cfg),
        "stream_epochs": cfg.train.epochs,
        "steps_per_epoch": (manifest.total_rows // 2) // 16,
        "run_dir": f"{storage}/{name}",
        "run_id": run_id,
        "tracking_uri": cfg.tracking.uri,
    }
    return build_trainer(cfg, ds, loop_config, name, storage).fit()


def test_killed_worker_resumes_mid_epoch_without_metric_gaps(ray_local, tmp_path):
    # 3 epochs × 2 steps; checkpoints at step 3 (mid-epoch 1) and 6 (the end); rank 1 is
    # SIGKILLed about to take step index 5, so steps 4 and 5 roll back and run again
    cfg = config(
        tmp_path,
        "train.epochs=3",
        "train.checkpoint_every_steps=3",
        "train.checkpoint_every_epochs=3",
        "train.max_failures=1",
        "train.fail_at_step=5",
        "train.fail_rank=1",
    )
    run_id = tracking.start_run(cfg, "killed")
    result = fit(cfg, tmp_path, "killed", run_id)

    assert result.metrics["step"] == 6 and result.metrics["epoch"] == 3  # epochs count from 1
    assert result.metrics["resumed_from_step"] == 3
    assert (tmp_path / "runs" / "killed" / ".sslpipe" / "fault-injected-step-5").exists()
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    assert (state["step"], state["epoch"], state["epoch_step"]) == (6, 3, 2)
    assert len(state["rng"]) == 2

    # what the driver does at the end: send what rank 0 could not
    log = MetricLogger(cfg.tracking.uri, run_id)
    log.requeue(state["pending_metrics"])
    assert log.flush(timeout=60)

    client = MlflowClient(cfg.tracking.uri)
    history = client.get_metric_history(run_id, "loss")
    counts = collections.Counter(m.step for m in history)
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]  # no gap
    # "no duplicate beyond the rolled-back steps": only steps after the checkpoint the run
    # resumed from (3) up to the step the worker died at (5) may hold a second value
    assert {s for s, n in counts.items() if n > 1} <= {4, 5}
    assert max(counts.values()) <= 2
    survivors = tracking.latest_per_step(history)
    assert [m.step for m in survivors] == [1, 2, 3, 4, 5, 6]
    resumed = client.get_metric_history(run_id, "resumed_from_step")
    assert [(m.step, m.value) for m in resumed] == [(3, 3.0)]

    records = tracking.checkpoints_of(client.get_run(run_id))
    assert [r["step"] for r in records] == [3, 6]
    assert records[-1]["uri"] == f"{tmp_path / 'runs'}/killed/checkpoint_000000006"
    assert load_state(records[-1]["uri"])["step"] == 6


def test_non_finite_loss_stops_with_the_last_checkpoint(ray_local, tmp_path):
    cfg = config(
        tmp_path,
        "train.epochs=2",
        "train.checkpoint_every_steps=1",
        "optim.name=sgd",
        "optim.base_lr=1.0e+30",  # the first update blows the weights up
        "optim.warmup_epochs=0",
    )
    with pytest.raises(Exception) as info:
        fit(cfg, tmp_path, "diverged")
    message = str(info.value)
    assert "loss is" in message and "at step 1" in message
    assert f"last good checkpoint: {tmp_path / 'runs'}/diverged/checkpoint_000000001" in message
