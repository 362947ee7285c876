"""``sslpipe pretrain`` on the driver: data, Ray, the MLflow run, the TorchTrainer; the end of
the run (evaluation, registry, summary) is in ``finish.py``."""

import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import ray
from mlflow import MlflowClient
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.cluster.local import start_local_ray, stop_ray_in_thread
from pipelines.config.layers import dump_yaml
from pipelines.config.schema import Config
from pipelines.config.typed import to_dict
from pipelines.data.manifest import Manifest
from pipelines.data.stream.bad_images import bad_image_report, create_counter
from pipelines.data.stream.source import training_dataset
from pipelines.data.synthetic import ensure_embedded
from pipelines.eval.encoders import encoders_from_state, eval_image_size
from pipelines.eval.sets import HOLDOUT, EvalSplit, split_views
from pipelines.tracking import console
from pipelines.tracking import runs as tracking
from pipelines.tracking.console import TrainingBar
from pipelines.tracking.datasets import log_datasets, manifest_digest
from pipelines.tracking.run_names import default_run_name, refuse_taken_name
from pipelines.tracking.system_metrics import system_metrics
from pipelines.train import progress
from pipelines.train.assets import log_assets, prepare_assets
from pipelines.train.batching import describe_workers, worker_range
from pipelines.train.checkpoint import load_state
from pipelines.train.dry_run import steps_per_epoch as epoch_steps
from pipelines.train.finish import evaluate_and_log, finish
from pipelines.train.loop import train_loop_per_worker
from pipelines.train.wrapup import WrapUp
from ssl_models.registry import get_method

log = logging.getLogger(__name__)


def resolve_data(cfg: Config) -> tuple[EvalSplit, str]:
    """The kNN split of this run and a line describing it for the summary."""
    if not cfg.data.path:
        if cfg.method == "rotnet":
            log.warning(
                "rotnet on the embedded dataset learns nothing: its shapes are drawn at random "
                "rotations, so a rotated image is as likely as an upright one and the rotation "
                "loss stays at ln 4 (measured); train rotnet on photographs (--data)"
            )
        train, test = ensure_embedded(
            cfg.data.cache_dir, cfg.data.embedded_train_per_class, cfg.data.embedded_test_per_class
        )
        return EvalSplit(
            train, test
        ), "embedded dataset: train split as bank, test split as queries"
    split = EvalSplit(cfg.data.path, cfg.data.eval_path)
    return split, split.note


def ensure_ray(cfg: Config) -> bool:
    """Start a local Ray sized for the workers plus the data pipeline, unless one is running;
    True when it started one."""
    if ray.is_initialized():
        return False
    workers = worker_range(cfg.train.workers)[1]
    needed = workers * cfg.train.cpus_per_worker + cfg.data.decode_tasks + 1
    num_cpus = max(int(needed + 0.999), os.cpu_count() or 1)
    start_local_ray(num_cpus)
    return True


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def storage_root(cfg: Config) -> str:
    s = cfg.train.storage
    return s if "://" in s else os.path.abspath(s)


def resolved(cfg: Config) -> Config:
    """The config as this run uses it: run name fixed, storage and tracking URI absolute, so
    ``sslpipe pretrain --resume`` from any directory finds the same run."""
    name = cfg.train.name or default_run_name(cfg.method)
    train = dataclasses.replace(cfg.train, name=name, storage=storage_root(cfg))
    track = dataclasses.replace(cfg.tracking, uri=tracking.absolute_uri(cfg.tracking.uri))
    return dataclasses.replace(cfg, train=train, tracking=track)


def build_trainer(
    cfg: Config,
    ds: ray.data.Dataset,
    loop_config: dict[str, Any],
    name: str,
    storage: str,
    extra_datasets: dict[str, ray.data.Dataset] | None = None,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The TorchTrainer of one run. Relaunching with the same ``name`` and ``storage`` resumes
    from that run's latest checkpoint (Ray Train keeps a snapshot of reported checkpoints).
    ``callbacks``: Ray Train user callbacks (a sweep's trial forwards reports to Tune).

    ``train.workers: [min, max]`` hands Ray Train the range (its elastic scaling policy): it
    starts with as many workers as the cluster's nodes hold within it, restarts with fewer when a
    node is lost and, every ``train.resize_check_seconds``, with more when nodes joined; each
    restart resumes from the latest registered checkpoint and the loop recuts the global batch
    (``batching.py``)."""
    low, high = worker_range(cfg.train.workers)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=low if low == high else (low, high),
            elastic_resize_monitor_interval_s=cfg.train.resize_check_seconds,
            use_gpu=cfg.train.use_gpu,
            # custom resources pin workers to a node group (train.worker_resources)
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or [],
        ),
        datasets={"train": ds, **(extra_datasets or {})},
        # only the training stream is split over workers; the monitor's sets are read whole
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def monitor_datasets(cfg: Config, split: EvalSplit, manifest: Manifest) -> dict:
    """The online kNN monitor's fixed bank and query subsets (materialised once, small)."""
    if not cfg.eval.knn_every_epochs or not manifest.class_names:
        return {}
    rows = max(1, manifest.total_rows)
    bank_fraction = cfg.eval.monitor_bank_rows / rows
    # an eval set's size is unknown without reading its manifest: cut it by row count instead
    query_fraction = 1.0 if split.eval else cfg.eval.monitor_query_rows / (rows * HOLDOUT)
    size, crop = eval_image_size(cfg), cfg.eval.crop_fraction
    bank, queries = split_views(
        split, size, crop, bank_fraction, query_fraction, resources=cfg.data.task_resources
    )
    if split.eval:
        queries = queries.limit(cfg.eval.monitor_query_rows)
    return {"knn_bank": bank.materialize(), "knn_query": queries.materialize()}


def pretrain(
    cfg: Config, resume_run_id: str | None = None, release_ray: bool = False
) -> dict[str, Any]:
    """Train, evaluate, log and register; return the summary. With ``resume_run_id`` (a run
    started earlier with this resolved config) continue that run and its MLflow run. With
    ``release_ray`` (a command that ends after this), a local Ray this call started is stopped
    as soon as nothing more needs it, while the encoder is scored and logged; without, it stays
    up for the next call."""
    started = time.time()
    cfg = resolved(cfg)
    if not resume_run_id:
        refuse_taken_name(cfg.train.storage, cfg.train.name)
    if "://" not in cfg.train.storage:
        console.attach_log(f"{cfg.train.storage}/{cfg.train.name}/sslpipe.log")
    split, eval_note = resolve_data(cfg)
    store = tracking.open_store(cfg.tracking.uri)  # meanwhile, Ray starts
    own_ray = ensure_ray(cfg)
    counter = create_counter()  # undecodable images skipped by the data tasks
    fallbacks = ""  # rows views.decode_device: train decoded on the CPU side after all
    if cfg.views.decode_device == "train":
        fallbacks = create_counter(kind="decode-fallbacks")
    # one execution streams every epoch (source.stream_files): no pipeline restart per epoch
    ds, manifest = training_dataset(cfg, split.train, counter, fallbacks, cfg.train.epochs)

    steps_per_epoch = epoch_steps(cfg, manifest, split.train)

    name, storage, uri = cfg.train.name, cfg.train.storage, cfg.tracking.uri
    run_dir = f"{storage}/{name}"
    cfg, assets = prepare_assets(cfg, split.train, run_dir)  # e.g. BEiT's fitted tokenizer
    store.result()
    if resume_run_id:
        run_id = resume_run_id
        client = MlflowClient(uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "sslpipe.resumed_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        tags = {
            "sslpipe.method": cfg.method,
            "sslpipe.family": get_method(cfg.method).family,
            "sslpipe.git_commit": git_commit(),
            "sslpipe.data": split.train,
            "sslpipe.data_manifest_sha256": manifest_digest(manifest),
        }
        run_id = tracking.start_run(cfg, name, tags)
        tracking.log_text(run_id, uri, dump_yaml(cfg), "config.yaml")
        log_datasets(run_id, uri, split.train, split.eval)
        log_assets(run_id, uri, assets)
    console.phase(
        f"training run {name} (MLflow run {run_id}): {manifest.total_rows} images, "
        f"{cfg.train.epochs} × {steps_per_epoch} steps (epochs × steps), "
        f"{describe_workers(cfg.train.workers)}"
    )

    extra = monitor_datasets(cfg, split, manifest)
    loop_config = {
        "cfg": to_dict(cfg),
        "steps_per_epoch": steps_per_epoch,
        "run_id": run_id,
        "tracking_uri": uri,
        "run_dir": run_dir,
        "num_classes": len(manifest.class_names),
        "knn_monitor": bool(extra),
        "bad_images_counter": counter,
        "decode_fallbacks_counter": fallbacks,
        "stream_epochs": cfg.train.epochs,
    }
    board_name, board = progress.create_board(name)
    loop_config["progress_board"] = board_name
    trainer = build_trainer(cfg, ds, loop_config, name, storage, extra)
    total = steps_per_epoch * cfg.train.epochs
    bar = TrainingBar(total, cfg.train.epochs, resumed_step(run_dir))
    follower = progress.Follower(board, bar)
    wrapup = WrapUp(cfg, split, evaluate=len(manifest.class_names) >= 2)  # while workers start
    try:
        with follower, system_metrics(run_id, uri, resumed=bool(resume_run_id)):
            result = trainer.fit()
    except Exception as e:
        tracking.end_run(run_id, uri, "FAILED")
        raise RunFailed(failure_report(cfg, e, follower.bar.step, run_dir)) from e
    if result.checkpoint is None:
        tracking.end_run(run_id, uri, "FAILED")
        raise RuntimeError(f"run {name} finished without a checkpoint under {run_dir}")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    bad = bad_image_report(counter)
    if bad.count:
        log.warning("skipped %d undecodable images, e.g. %s", bad.count, bad.keys[:10])
        tracking.log_dict(run_id, uri, {"count": bad.count, "keys": bad.keys}, "bad_images.json")
    if fallbacks:
        fell = bad_image_report(fallbacks)
        log.info("views.decode_device: %d images decoded on the CPU side instead", fell.count)
        tracking.log_dict(
            run_id, uri, {"count": fell.count, "keys": fell.keys}, "decode_fallbacks.json"
        )
    encoders = encoders_from_state(cfg, state)
    views = wrapup.views()
    # with the views made in-process, nothing below uses Ray: its ~1 s of stopping overlaps
    stopping = stop_ray_in_thread() if release_ray and own_ray and views is not None else None
    try:
        seconds = time.time() - started
        phase = f"evaluating: kNN top-1 of the trained and random-init encoders ({eval_note})"
        console.phase(phase)
        summary_metrics = evaluate_and_log(
            cfg,
            split,
            manifest,
            state,
            encoders,
            run_id,
            seconds,
            {"bad_images": bad.count},
            views,
        )
        console.phase("logging the encoder to MLflow and registering it")
        classes = len(manifest.class_names)
        trained = encoders["trained"]
        timings = follower.timings
        return finish(
            cfg, run_id, state, trained, summary_metrics, eval_note, started, classes, timings
        )
    finally:
        if stopping is not None:
            stopping.join()


class RunFailed(RuntimeError):
    """A training run that stopped: the message says what, where, and how to go on."""


def resumed_step(run_dir: str) -> int:
    """The step of the newest checkpoint a relaunch of this run resumes from (0: none)."""
    found = Path(run_dir).glob("checkpoint_*") if "://" not in run_dir else []
    steps = [int(p.name[len("checkpoint_") :]) for p in found if p.name[11:].isdigit()]
    return max(steps, default=0)


def failure_report(cfg: Config, error: BaseException, step: int, run_dir: str) -> str:
    """A few lines instead of Ray's traceback: what failed, at which step, the last
    checkpoint, the command that resumes, and how to let Ray restart workers."""
    cause = error
    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        rank, cause = sorted(failures.items())[0]
        what = f"worker {rank} failed: {type(cause).__name__}"
    else:
        what = f"training failed: {type(error).__name__}"
    detail = str(cause).strip().splitlines()
    lines = [f"{what}: {detail[0] if detail else ''}".rstrip(": ")]
    lines.append(f"  last step shown: {step}")
    last = resumed_step(run_dir)
    lines.append(
        f"  last checkpoint: {run_dir}/checkpoint_{last:09d}" if last else "  no checkpoint yet"
    )
    lines.append(f"  resume with: sslpipe pretrain --resume {cfg.train.name}")
    if cfg.train.max_failures == 0:
        lines.append(
            "  Ray restarts failed workers from the last checkpoint with --set train.max_failures=3"
        )
    lines.append(f"  details: {console.log_path() or 'rerun with -v'}")
    return "\n".join(lines)
