"""One sweep trial: a Tune function trainable that launches ``pretrain``'s TorchTrainer.

Every trial trains through :func:`pipelines.train.loop.train_loop_per_worker`, the function
``sslpipe pretrain`` runs, on a TorchTrainer built by the same ``build_trainer``, following
Ray's pattern for Tune over Train V2 (a Tune function that builds the trainer and calls
``fit()``). Two ways to drive it:

- **one fit** (FIFO, ASHA, the survey): the trainer runs the whole budget; a Train callback
  forwards rank 0's per-epoch report to Tune, so ASHA can stop the trial between epochs.
- **one fit per perturbation interval** (PBT): Tune only receives a ``checkpoint_path`` metric
  from a trainer inside a trial, which PBT's exploit cannot move between trials. So after every
  interval of epochs the trial reports a small Tune checkpoint (``origin.json``: the Train
  checkpoint's URI, the trial that wrote it, its epoch). When PBT exploits, the losing trial
  restarts with the winner's Tune checkpoint and mutated config, and its next fit starts from
  the winner's Train checkpoint (``init_checkpoint``) under the new learning rate/temperature.
  The schedule still spans ``train.epochs`` (``stop_epoch`` ends each fit early).
"""

import json
import os
import tempfile
import uuid
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.config.layers import deep_merge, dump_yaml, load_config
from pipelines.config.schema import Config
from pipelines.config.typed import to_dict
from pipelines.data.stream.source import training_dataset
from pipelines.tracking import runs as tracking
from pipelines.train.checkpoint import load_state_uri
from pipelines.train.dry_run import steps_per_epoch as epoch_steps
from pipelines.train.trainer import build_trainer, monitor_datasets, resolve_data
from ssl_models.registry import get_method
from tuning.space import unflatten

ORIGIN = "origin.json"


class EpochReportCallback(TuneReportCallback):
    """Forwards rank 0's epoch report to Tune with the online kNN under ``knn_top1``."""

    def after_report(self, run_context, metrics, checkpoint):
        renamed = [rename(m) for m in metrics]
        super().after_report(run_context, renamed, checkpoint)


def rename(metrics: dict[str, Any]) -> dict[str, Any]:
    out = dict(metrics)
    if "monitor_knn_top1" in out:
        out["knn_top1"] = out["monitor_knn_top1"]
    return out


def trial_config(spec: dict[str, Any], config: dict[str, Any]) -> Config:
    """The trial's config: the sweep's base (method, file, flags) under the sampled values."""
    sampled = {k: v for k, v in config.items() if k != "method"}
    method = config.get("method", spec["method"])
    return load_config(method, None, deep_merge(spec["overrides"], unflatten(sampled)))


def child_run(cfg: Config, spec: dict[str, Any], trial_id: str, trial_name: str) -> str:
    """The trial's MLflow run under the sweep's parent; the same one again when a resumed
    sweep restarts an unfinished trial."""
    from mlflow import MlflowClient

    uri = cfg.tracking.uri
    client = MlflowClient(tracking.absolute_uri(uri))
    exp = tracking.experiment_id(client, uri, cfg.tracking.experiment)
    found = client.search_runs(
        [exp],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{spec['parent_run_id']}' "
            f"and tags.`sslpipe.trial_id` = '{trial_id}'"
        ),
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {
        "mlflow.parentRunId": spec["parent_run_id"],
        "sslpipe.sweep": spec["sweep"],
        "sslpipe.trial_id": trial_id,
        "sslpipe.method": cfg.method,
        "sslpipe.family": get_method(cfg.method).family,
    }
    run_id = tracking.start_run(cfg, f"{spec['sweep']}/{trial_name}", tags)
    tracking.log_text(run_id, uri, dump_yaml(cfg), "config.yaml")
    return run_id


def _setup(config: dict[str, Any], spec: dict[str, Any]):
    """Config, data, MLflow run and loop config of this trial (the part shared with pretrain)."""
    from pipelines.train.assets import prepare_assets

    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = trial_config(spec, config)
    split, _ = resolve_data(cfg)
    ds, manifest = training_dataset(cfg, split.train)
    steps_per_epoch = epoch_steps(cfg, manifest, split.train)
    storage = f"{spec['storage']}/trials"
    cfg, _ = prepare_assets(cfg, split.train, f"{storage}/{trial_id}")
    run_id = child_run(cfg, spec, trial_id, trial_name)
    extra = monitor_datasets(cfg, split, manifest)
    loop_config = {
        "cfg": to_dict(cfg),
        "steps_per_epoch": steps_per_epoch,
        "run_id": run_id,
        "tracking_uri": cfg.tracking.uri,
        "num_classes": len(manifest.class_names),
        "knn_monitor": bool(extra),
    }
    return cfg, ds, extra, loop_config, storage, trial_id, run_id


def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """FIFO / ASHA / survey: the whole budget in one fit, every epoch reported to Tune. A
    restarted trial (resumed sweep) relaunches the same Train run name: it continues from that
    run's latest checkpoint."""
    cfg, ds, extra, loop_config, storage, trial_id, run_id = _setup(config, spec)
    loop_config["run_dir"] = f"{storage}/{trial_id}"
    trainer = build_trainer(
        cfg, ds, loop_config, trial_id, storage, extra, callbacks=[EpochReportCallback()]
    )
    try:
        trainer.fit()
    except Exception:
        tracking.end_run(run_id, cfg.tracking.uri, "FAILED")
        raise
    tracking.end_run(run_id, cfg.tracking.uri)


def _origin(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d, open(os.path.join(d, ORIGIN)) as f:
        return json.load(f)


def run_pbt_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """PBT: one fit per ``pbt_interval`` epochs, each ending in a Tune checkpoint that points
    at the Train checkpoint (see the module docstring)."""
    cfg, ds, extra, loop_config, storage, trial_id, run_id = _setup(config, spec)
    origin = _origin(tune.get_checkpoint())
    start = origin["epoch"] + 1 if origin else 0
    init = origin["train_checkpoint"] if origin else ""
    exploited = bool(origin and origin["trial_id"] != trial_id)
    if exploited:
        from mlflow import MlflowClient

        MlflowClient(tracking.absolute_uri(cfg.tracking.uri)).set_tag(
            run_id, f"sslpipe.pbt.exploited_at_epoch_{start}", origin["trial_id"]
        )
    interval = max(1, int(spec.get("pbt_interval", 1)))
    while start < cfg.train.epochs:
        stop = min(cfg.train.epochs, start + interval)
        name = f"{trial_id}-{stop:04d}-{uuid.uuid4().hex[:6]}"  # fresh: never resume another
        fit_config = {
            **loop_config,
            "run_dir": f"{storage}/{name}",
            "init_checkpoint": init,
            "stop_epoch": stop,
        }
        try:
            result = build_trainer(cfg, ds, fit_config, name, storage, extra).fit()
        except Exception:
            tracking.end_run(run_id, cfg.tracking.uri, "FAILED")
            raise
        if result.checkpoint is None:
            raise RuntimeError(f"trial {trial_id}: fit {name} ended without a checkpoint")
        init = result.checkpoint.path
        if "://" not in init and "://" in storage:
            init = f"{storage}/{name}/{os.path.basename(init)}"
        metrics = rename(result.metrics or {})
        metrics.update({"checkpoint_path": init, "exploited": int(exploited), "start_epoch": start})
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, ORIGIN), "w") as f:
                json.dump({"train_checkpoint": init, "trial_id": trial_id, "epoch": stop - 1}, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        start, exploited = stop, False
    tracking.end_run(run_id, cfg.tracking.uri)


def state_config(checkpoint_path: str) -> tuple[dict, Config]:
    """A trial checkpoint's state and the exact config it trained with."""
    from pipelines.config.layers import build_config

    state = load_state_uri(checkpoint_path)
    return state, build_config(state["config"])
