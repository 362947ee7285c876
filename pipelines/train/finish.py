"""The end of a pretraining run on the driver: the final kNN of the trained and random-init
encoders, every metric still pending, the encoder as an MLflow model, the registry, the summary.
"""

import time
from typing import Any

import torch

from pipelines.config.schema import Config
from pipelines.data.manifest import Manifest
from pipelines.eval.encoders import eval_image_size
from pipelines.eval.probes import embed, knn_top1
from pipelines.eval.sets import EvalSplit, split_views
from pipelines.tracking import runs as tracking
from pipelines.tracking.metric_logger import MetricLogger
from ssl_models.export import Encoder


def embed_eval_split(
    cfg: Config, split: EvalSplit, encoders: dict[str, Encoder]
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Each encoder's features of the bank (training rows) and of the queries (the eval split),
    with their labels: ``(bank, bank_labels, queries, query_labels)``."""
    bank_ds, query_ds = split_views(
        split,
        eval_image_size(cfg),
        cfg.eval.crop_fraction,
        resources=cfg.data.task_resources,
        in_process_rows=cfg.eval.in_process_rows,
    )
    bank, bank_labels = embed(encoders, bank_ds, cfg.eval.batch_size)
    queries, query_labels = embed(encoders, query_ds, cfg.eval.batch_size)
    return bank, bank_labels, queries, query_labels


def evaluate_knn(
    cfg: Config, split: EvalSplit, encoders: dict[str, Encoder], num_classes: int
) -> dict[str, float]:
    """kNN top-1 of each encoder: bank from the training rows, queries from the eval split."""
    bank, bank_labels, queries, query_labels = embed_eval_split(cfg, split, encoders)
    k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
    return {
        name: knn_top1(bank[name], bank_labels, queries[name], query_labels, num_classes, k, t)
        for name in encoders
    }


def evaluate_and_log(
    cfg: Config,
    split: EvalSplit,
    manifest: Manifest,
    state: dict,
    encoders: dict[str, Encoder],
    run_id: str,
    seconds: float,
    extra: dict[str, float] | None = None,
) -> dict[str, float]:
    """Final kNN of the trained and random-init encoders; send every metric still pending
    (rank 0's unsent ones travel in the checkpoint) with the summary metrics."""
    summary_metrics: dict[str, float] = {"train_seconds": round(seconds, 1), **(extra or {})}
    if manifest.class_names:
        accuracy = evaluate_knn(cfg, split, encoders, len(manifest.class_names))
        summary_metrics["knn_top1"] = accuracy["trained"]
        if "random_init" in accuracy:
            summary_metrics["knn_top1_random_init"] = accuracy["random_init"]
    metrics_log = MetricLogger(cfg.tracking.uri, run_id)
    metrics_log.requeue(state.get("pending_metrics", []))
    metrics_log.log(summary_metrics, state["step"])
    if not metrics_log.flush(timeout=cfg.tracking.final_flush_seconds):
        raise RuntimeError(
            f"MLflow at {tracking.redact({'u': cfg.tracking.uri})['u']} stayed unreachable for "
            f"{cfg.tracking.final_flush_seconds:.0f} s; the checkpoint keeps the unsent metrics: "
            f"rerun with --resume {run_id} once it is back"
        )
    return summary_metrics


def finish(
    cfg: Config,
    run_id: str,
    state: dict,
    encoder: Encoder,
    summary_metrics: dict[str, float],
    eval_note: str,
    started: float,
) -> dict[str, Any]:
    """Curves, the encoder as a model, the registry, the summary; the run ends FINISHED."""
    from pipelines.tracking.curves import plot_curves

    uri = cfg.tracking.uri
    size = eval_image_size(cfg)
    plot_curves(run_id, uri)
    example = torch.rand(2, 3, size, size).numpy()
    model_uri = tracking.log_encoder(run_id, uri, encoder, example)
    registered, is_best = "", False
    if cfg.tracking.register:
        name = cfg.tracking.registered_model or f"sslpipe-{cfg.method}"
        knn = summary_metrics.get("knn_top1")
        registered, is_best = tracking.register(model_uri, uri, name, cfg.tracking.aliases, knn)
    summary = {
        "run_id": run_id,
        "run_name": cfg.train.name,
        "method": cfg.method,
        "tracking_uri": tracking.redact({"u": uri})["u"],
        "metrics": summary_metrics,
        "knn_eval": eval_note,
        "model_uri": model_uri,
        "registered_model_uri": registered,
        "best_alias": is_best,
        "checkpoint": f"{cfg.train.storage}/{cfg.train.name}/checkpoint_{state['step']:09d}",
        "steps": state["step"],
        "wall_seconds": round(time.time() - started, 1),
        "mlflow_ui": tracking.ui_command(uri),
    }
    tracking.log_dict(run_id, uri, summary, "summary.json")
    tracking.end_run(run_id, uri)
    return summary
