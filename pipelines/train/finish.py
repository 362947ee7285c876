"""The end of a pretraining run on the driver: the final kNN of the trained and random-init
encoders, every metric still pending, the encoder as an MLflow model, the registry, the summary.
"""

import time
from collections.abc import Callable
from typing import Any

import torch
from mlflow import MlflowClient

from pipelines.config.schema import Config
from pipelines.data.manifest import Manifest
from pipelines.eval.encoders import eval_image_size, logged_metadata
from pipelines.eval.frozen import KNN, evaluate_encoders
from pipelines.eval.sets import EvalSplit, HeldViews
from pipelines.tracking import console
from pipelines.tracking import runs as tracking
from pipelines.tracking.checkpoint_records import mark_pruned
from pipelines.tracking.metric_logger import MetricLogger
from pipelines.tracking.model_card import model_card
from ssl_models.export import Encoder


def evaluate_and_log(
    cfg: Config,
    split: EvalSplit,
    manifest: Manifest,
    state: dict,
    encoders: dict[str, Encoder],
    run_id: str,
    seconds: float,
    extra: dict[str, float] | None = None,
    views: tuple[HeldViews, HeldViews] | None = None,
) -> dict[str, float]:
    """Final kNN of the trained and random-init encoders (on ``views``, the bank and queries
    made during start-up, where given); send every metric still pending (rank 0's unsent ones
    travel in the checkpoint) with the summary metrics."""
    summary_metrics: dict[str, float] = {"train_seconds": round(seconds, 1), **(extra or {})}
    if len(manifest.class_names) >= 2:  # with one class every query is right: nothing to measure
        res = cfg.data.task_resources
        top1 = evaluate_encoders(encoders, split, cfg.eval, resources=res, views=views).top1
        summary_metrics["knn_top1"] = top1["trained"][KNN]
        if "random_init" in top1:
            summary_metrics["knn_top1_random_init"] = top1["random_init"][KNN]
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
    num_classes: int = 0,
    timings: Callable[[float], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Curves, the encoder as a model, the registry, the summary; the run ends FINISHED.
    ``num_classes``: of the evaluation set, for the kNN curve's chance line. ``timings``: the
    wall-time breakdown from ``started`` (``progress.Follower.timings``) for the summary."""
    from pipelines.tracking.curves import plot_curves

    uri = cfg.tracking.uri
    size = eval_image_size(cfg)
    plot_curves(run_id, uri, num_classes)
    example = torch.rand(2, 3, size, size).numpy()
    with console.captured("mlflow"):  # MLflow prints its registry notices itself
        model_uri = tracking.log_encoder(
            run_id, uri, encoder, example, metadata=logged_metadata(cfg)
        )
        registered, is_best = "", False
        if cfg.tracking.register:
            name = cfg.tracking.registered_model or f"sslpipe-{cfg.method}"
            knn = summary_metrics.get("knn_top1")
            run = MlflowClient(uri).get_run(run_id)
            epochs = state.get("epoch", cfg.train.epochs)
            text, tags = model_card(cfg, run, epochs, summary_metrics, eval_note)
            registered, is_best = tracking.register(
                model_uri, uri, name, cfg.tracking.aliases, knn, text, tags
            )
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
        "timings": timings(started) if timings else {},
        "mlflow_ui": tracking.ui_command(uri),
    }
    mark_pruned(run_id, uri)  # the tags of a killed worker may not have left it
    tracking.log_dict(run_id, uri, summary, "summary.json")
    tracking.end_run(run_id, uri)
    return summary
