"""``sslpipe tune`` on the driver: checks, the Tuner, the MLflow tree, the best trial registered.

A sweep lives in ``<train.storage>/<sweep name>/``: Tune's experiment state, ``sweep.json`` (what
``--resume`` needs to rebuild the same trainable: base config, space, scheduler, parent run) and
``trials/`` (each trial's Train checkpoints).
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config.layers import deep_merge, load_config
from pipelines.config.typed import ConfigError
from pipelines.tracking import console
from pipelines.tracking import runs as tracking
from pipelines.train.trainer import storage_root
from ssl_models.registry import get_method
from tuning.finish import finish_sweep
from tuning.space import Dimension, param_space, parse_space, validate

SPEC_FILE = "sweep.json"
#: metrics every trial reports each epoch; knn_top1 needs labeled data (the online kNN monitor)
METRICS = ("loss", "knn_top1", "images_per_sec")
SCHEDULERS = ("fifo", "asha", "pbt")
TRIAL_CPU = 0.01  # the trial function's own share


@dataclass
class SweepOptions:
    method: str | None
    overrides: dict[str, Any]  # the --config file and flags, merged
    space: dict[str, Any]  # the space file's plain data
    num_samples: int = 1
    scheduler: str = "fifo"
    metric: str = "knn_top1"
    mode: str = "max"
    max_concurrent: int = 1
    name: str = ""
    grace_epochs: int = 1  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2  # ASHA: keep the top 1/rf at each rung
    pbt_interval: int = 1  # PBT: epochs between perturbations
    register: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def check_metric(metric: str, mode: str, labeled: bool) -> None:
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: no trial reports it; trials report {list(METRICS)}")
    if mode not in ("min", "max"):
        raise ConfigError(f"--mode {mode}: use min or max")
    if metric == "knn_top1" and not labeled:
        raise ConfigError("--metric knn_top1: the training shards have no labels, no kNN runs")


def base_overrides(opts: SweepOptions) -> dict[str, Any]:
    """Paths made absolute (trials run in other processes and directories); the online kNN on
    when the metric needs it; mid-epoch checkpoints off (one Tune iteration = one epoch)."""
    cfg = load_config(opts.method, None, opts.overrides)
    more: dict[str, Any] = {
        "train": {"storage": storage_root(cfg), "checkpoint_every_steps": 0},
        "tracking": {"uri": tracking.absolute_uri(cfg.tracking.uri)},
        "data": {"cache_dir": os.path.abspath(cfg.data.cache_dir)},
    }
    if opts.metric == "knn_top1" and not cfg.eval.knn_every_epochs:
        more["eval"] = {"knn_every_epochs": 1}
    return deep_merge(opts.overrides, more)


def prepare(opts: SweepOptions) -> tuple[dict[str, Any], list[Dimension]]:
    """Every check that can fail before a trial starts; the spec trials receive."""
    from pipelines.data.manifest import read_manifest
    from pipelines.train.trainer import resolve_data

    if opts.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {opts.scheduler}: use one of {list(SCHEDULERS)}")
    dims = parse_space(opts.space)
    overrides = base_overrides(opts)
    validate(dims, opts.method, overrides)
    cfg = load_config(opts.method, None, overrides)
    split, _ = resolve_data(cfg)  # generates the embedded set once, before trials race for it
    manifest, _, _ = read_manifest(split.train)
    check_metric(opts.metric, opts.mode, len(manifest.class_names) >= 2)
    name = opts.name or f"tune-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = {
        "method": cfg.method,
        "overrides": overrides,
        "space": opts.space,
        "sweep": name,
        "storage": f"{cfg.train.storage}/{name}",
        "tracking_uri": cfg.tracking.uri,
        "experiment": cfg.tracking.experiment,
        "options": {k: v for k, v in vars(opts).items() if k not in ("overrides", "space")},
    }
    return spec, dims


def scheduler_of(spec: dict[str, Any], dims: list[Dimension]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    o = spec["options"]
    epochs = load_config(spec["method"], None, spec["overrides"]).train.epochs
    if o["scheduler"] == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=o["grace_epochs"],
            reduction_factor=o["reduction_factor"],
        )
    if o["scheduler"] == "pbt":
        # synchronous: every member reaches the interval before anyone is judged, so small
        # populations compare like with like (and the exploit does not depend on timing)
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=1,
            hyperparam_mutations={d.key: d.mutation() for d in dims},
            quantile_fraction=0.5,
            synch=True,
        )
    return FIFOScheduler()


def trainable_of(spec: dict[str, Any]):
    from ray import tune

    from tuning.trial import run_pbt_trial, run_trial

    fn = run_pbt_trial if spec["options"]["scheduler"] == "pbt" else run_trial
    # the trial function only waits on its TorchTrainer: workers and data tasks hold the CPUs
    # (Tune refuses an empty request, so a token share)
    return tune.with_resources(tune.with_parameters(fn, spec=spec), {"CPU": TRIAL_CPU})


def start_parent(spec: dict[str, Any], kind: str) -> str:
    cfg = load_config(spec["method"], None, spec["overrides"])
    tags = {
        "sslpipe.kind": kind,
        "sslpipe.sweep": spec["sweep"],
        "sslpipe.method": cfg.method,
        "sslpipe.family": get_method(cfg.method).family,
    }
    run_id = tracking.start_run(cfg, spec["sweep"], tags)
    tracking.log_dict(run_id, cfg.tracking.uri, spec, "sweep.json")
    return run_id


def write_spec(spec: dict[str, Any]) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(
        spec["storage"]
        if "://" in spec["storage"]
        else f"file://{os.path.abspath(spec['storage'])}"
    )
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as f:
        f.write(json.dumps(spec, indent=2).encode())


def read_spec(sweep_dir: str) -> dict[str, Any]:
    import pyarrow.fs as pafs

    uri = sweep_dir if "://" in sweep_dir else f"file://{os.path.abspath(sweep_dir)}"
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(f"{path}/{SPEC_FILE}").type == pafs.FileType.NotFound:
        raise ConfigError(f"--resume {sweep_dir}: no {SPEC_FILE}; not a sweep directory")
    with fs.open_input_stream(f"{path}/{SPEC_FILE}") as f:
        return json.loads(f.read())


def latest_sweep(storage: str) -> str:
    """The most recently started local sweep under ``storage`` (for a bare ``--resume``)."""
    root = Path(storage)
    found = sorted(root.glob(f"*/{SPEC_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"--resume: no sweep under {root} (pass the sweep directory)")
    return str(found[-1].parent)


def tuner_of(spec: dict[str, Any], dims: list[Dimension], extra_space: dict | None = None):
    from ray import tune

    o = spec["options"]
    space = {**param_space(dims), **(extra_space or {})}
    return tune.Tuner(
        trainable_of(spec),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=o["metric"],
            mode=o["mode"],
            num_samples=o["num_samples"],
            scheduler=scheduler_of(spec, dims),
            max_concurrent_trials=o["max_concurrent"],
        ),
        run_config=tune.RunConfig(
            name=spec["sweep"],
            storage_path=spec["storage"].rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # Tune's own status tables with -v; otherwise one line per trial epoch and end
            verbose=2 if console.verbose() else 0,
            callbacks=[] if console.verbose() else [trial_lines(o["metric"])],
        ),
    )


def trial_lines(metric: str):
    """A Tune callback printing one line per trial result (an epoch) and per finished trial."""
    from ray.tune import Callback

    class Lines(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            method = trial.config.get("method", "")
            value = result.get(metric)
            shown = f"  {metric} {value:.4f}" if isinstance(value, (int, float)) else ""
            console.phase(
                f"trial {trial.trial_id} {method}: epoch {result.get('epoch', '?')}"
                f"  loss {result.get('loss', float('nan')):.4f}{shown}"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            console.phase(f"trial {trial.trial_id} done")

        def on_trial_error(self, iteration, trials, trial, **info):
            console.phase(f"trial {trial.trial_id} failed (its log: {trial.local_path})")

    return Lines()


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    spec, dims = prepare(opts)
    spec["parent_run_id"] = start_parent(spec, "tune")
    write_spec(spec)
    print(
        f"sslpipe tune: sweep {spec['sweep']} (MLflow parent run {spec['parent_run_id']}), "
        f"{spec['storage']}",
        flush=True,
    )
    return finish_sweep(spec, tuner_of(spec, dims).fit())


def resume_sweep(sweep_dir: str) -> dict[str, Any]:
    """Continue an interrupted sweep: finished trials keep their results, unfinished ones
    restart (from their latest checkpoint), errored ones run again."""
    from ray import tune

    spec = read_spec(sweep_dir)
    if not tune.Tuner.can_restore(spec["storage"]):
        raise ConfigError(f"--resume {sweep_dir}: Tune has no experiment state there")
    tuner = tune.Tuner.restore(
        spec["storage"], trainable_of(spec), resume_unfinished=True, restart_errored=True
    )
    from mlflow import MlflowClient

    MlflowClient(spec["tracking_uri"]).update_run(spec["parent_run_id"], status="RUNNING")
    return finish_sweep(spec, tuner.fit())
