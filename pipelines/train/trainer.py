"""``sslpipe pretrain`` on the driver: data, Ray, the TorchTrainer, evaluation, registry."""

import hashlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines import tracking
from pipelines.assets import log_assets, prepare_assets
from pipelines.config import Config, to_dict
from pipelines.data.manifest import Manifest
from pipelines.data.source import training_dataset
from pipelines.data.synthetic import ensure_embedded
from pipelines.evaluate import embed, eval_views, knn_top1
from pipelines.train.checkpoint import load_state
from pipelines.train.loop import train_loop_per_worker
from pipelines.train.step import build_method
from ssl_models.export import Encoder
from ssl_models.registry import get_method

log = logging.getLogger(__name__)

HOLDOUT = 0.1  # fraction of training rows used as kNN queries when no eval set is given


@dataclass(frozen=True)
class DataPaths:
    train: str
    eval: str  # labeled shards for kNN queries ("" when none)
    eval_note: str  # how the kNN split was made, for the summary


def resolve_data(cfg: Config) -> DataPaths:
    if not cfg.data.path:
        train, test = ensure_embedded(
            cfg.data.cache_dir, cfg.data.embedded_train_per_class, cfg.data.embedded_test_per_class
        )
        return DataPaths(
            train, test, "embedded dataset: train split as bank, test split as queries"
        )
    if cfg.data.eval_path:
        return DataPaths(cfg.data.path, cfg.data.eval_path, f"queries from {cfg.data.eval_path}")
    return DataPaths(
        cfg.data.path, "", f"a fixed {HOLDOUT:.0%} of training rows (by key hash) as queries"
    )


def ensure_ray(cfg: Config) -> None:
    """Start a local Ray sized for the workers plus the data pipeline, unless one is running."""
    if ray.is_initialized():
        return
    needed = cfg.train.workers * cfg.train.cpus_per_worker + cfg.data.decode_tasks + 1
    num_cpus = max(int(needed + 0.999), os.cpu_count() or 1)
    # "local": a new instance even if a `ray start` cluster runs on this machine (--address
    # chooses a cluster explicitly)
    ray.init(address="local", num_cpus=num_cpus)


def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()[:16]


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


def eval_image_size(cfg: Config) -> int:
    groups = cfg.views.groups
    return (groups.get("global") or next(iter(groups.values()))).size


def encoders_from_state(cfg: Config, state: dict[str, Any] | None) -> dict[str, Encoder]:
    """The trained encoder from a checkpoint state and, optionally, the same architecture at its
    random initialisation (seeded exactly as the training run started)."""
    size = eval_image_size(cfg)
    out = {}
    if state is not None:
        method = build_method(cfg)
        method.load_state_dict(state["model"])
        out["trained"] = Encoder(method.encoder, cfg.views.mean, cfg.views.std, size)
    if cfg.eval.knn_random_init:
        torch.manual_seed(cfg.train.seed)
        out["random_init"] = Encoder(build_method(cfg).encoder, cfg.views.mean, cfg.views.std, size)
    return out


def evaluate_knn(
    cfg: Config, paths: DataPaths, encoders: dict[str, Encoder], num_classes: int
) -> dict[str, float]:
    """kNN top-1 of each encoder: bank from the training rows, queries from the eval split."""
    size, crop = eval_image_size(cfg), cfg.eval.crop_fraction
    if paths.eval:
        bank_ds, _ = eval_views(paths.train, size, crop)
        query_ds, _ = eval_views(paths.eval, size, crop)
    else:
        bank_ds, _ = eval_views(paths.train, size, crop, HOLDOUT, 1.0)
        query_ds, _ = eval_views(paths.train, size, crop, 0.0, HOLDOUT)
    bank, bank_labels = embed(encoders, bank_ds, cfg.eval.batch_size)
    queries, query_labels = embed(encoders, query_ds, cfg.eval.batch_size)
    return {
        name: knn_top1(
            bank[name],
            bank_labels,
            queries[name],
            query_labels,
            num_classes,
            cfg.eval.knn_k,
            cfg.eval.knn_temperature,
        )
        for name in encoders
    }


def build_trainer(
    cfg: Config, ds: ray.data.Dataset, loop_config: dict[str, Any], name: str, storage: str
) -> TorchTrainer:
    """The TorchTrainer of one run. Relaunching with the same ``name`` and ``storage`` resumes
    from that run's latest checkpoint (Ray Train keeps a snapshot of reported checkpoints)."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        datasets={"train": ds},
    )


def pretrain(cfg: Config) -> dict[str, Any]:
    """Train, evaluate, log and register; return the summary."""
    started = time.time()
    paths = resolve_data(cfg)
    ensure_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds, manifest = training_dataset(cfg, paths.train)

    workers = cfg.train.workers
    per_worker = cfg.train.batch_size // workers
    steps_per_epoch = (manifest.total_rows // workers) // max(1, per_worker)
    if steps_per_epoch < 1:
        raise ValueError(
            f"{paths.train} holds {manifest.total_rows} images, fewer than one global batch of "
            f"train.batch_size={cfg.train.batch_size}; lower the batch size"
        )

    name = cfg.train.name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = storage_root(cfg)
    run_dir = f"{storage}/{name}"
    cfg, assets = prepare_assets(cfg, paths.train, run_dir)  # e.g. BEiT's fitted tokenizer
    tracking_uri = tracking.absolute_uri(cfg.tracking.uri)
    tags = {
        "sslpipe.method": cfg.method,
        "sslpipe.family": get_method(cfg.method).family,
        "sslpipe.git_commit": git_commit(),
        "sslpipe.data": paths.train,
        "sslpipe.data_manifest_sha256": manifest_digest(manifest),
    }
    run_id = tracking.start_run(cfg, name, tags)
    log_assets(run_id, tracking_uri, assets)
    print(
        f"sslpipe: run {name} (MLflow run {run_id}), {manifest.total_rows} images, "
        f"{cfg.train.epochs} epochs × {steps_per_epoch} steps, {workers} workers",
        flush=True,
    )

    loop_config = {
        "cfg": to_dict(cfg),
        "steps_per_epoch": steps_per_epoch,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "run_dir": run_dir,
    }
    trainer = build_trainer(cfg, ds, loop_config, name, storage)
    try:
        result = trainer.fit()
    except Exception:
        tracking.end_run(run_id, tracking_uri, "FAILED")
        raise
    train_seconds = time.time() - started
    if result.checkpoint is None:
        tracking.end_run(run_id, tracking_uri, "FAILED")
        raise RuntimeError(f"run {name} finished without a checkpoint under {run_dir}")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)

    summary_metrics: dict[str, float] = {"train_seconds": round(train_seconds, 1)}
    size = eval_image_size(cfg)
    encoders = encoders_from_state(cfg, state)
    if manifest.class_names:
        accuracy = evaluate_knn(cfg, paths, encoders, len(manifest.class_names))
        summary_metrics["knn_top1"] = accuracy["trained"]
        if "random_init" in accuracy:
            summary_metrics["knn_top1_random_init"] = accuracy["random_init"]
    metrics_log = tracking.MetricLogger(tracking_uri, run_id)
    metrics_log.log(summary_metrics, state["step"])
    metrics_log.flush()

    example = torch.rand(1, 3, size, size).numpy()
    model_uri = tracking.log_encoder(run_id, tracking_uri, encoders["trained"], example)
    registered = ""
    if cfg.tracking.register:
        registered = tracking.register(
            model_uri, tracking_uri, cfg.tracking.registered_model or f"sslpipe-{cfg.method}", []
        )
    summary = {
        "run_id": run_id,
        "run_name": name,
        "method": cfg.method,
        "tracking_uri": tracking_uri,
        "metrics": summary_metrics,
        "knn_eval": paths.eval_note,
        "model_uri": model_uri,
        "registered_model_uri": registered,
        "checkpoint": result.checkpoint.path,
        "steps": state["step"],
        "wall_seconds": round(time.time() - started, 1),
        "mlflow_ui": tracking.ui_command(tracking_uri),
    }
    tracking.log_dict(run_id, tracking_uri, summary, "summary.json")
    tracking.end_run(run_id, tracking_uri)
    return summary
