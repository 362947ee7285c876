"""The per-worker training function Ray Train runs: one process of the DDP group.

Ray calls here are few: the context (rank, device), the dataset shards, the checkpoint to resume
from, and ``ray.train.report``. Everything else is :class:`pipelines.train.step.TrainStep`.

Resuming mid-epoch: Ray Data's stream cannot be replayed (file order, decode tasks and crops are
not a pure function of a seed), so the interrupted epoch continues on a fresh pass over the data
cut at the steps that epoch still owes. Every epoch keeps ``steps_per_epoch`` optimizer steps and
the run its exact total, and the schedules, weights, optimizer and train-side random state are
exactly those of the checkpoint; only which images fill the rest of that one epoch differs.
"""

import logging
import os
import sys
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines.config.layers import build_config
from pipelines.config.schema import Config
from pipelines.data.stream.bad_images import bad_image_count
from pipelines.eval.monitors import KnnMonitor
from pipelines.tracking.secrets import redact_tree
from pipelines.train.checkpoint import capture_rng, gather_rng, load_state, save_state
from pipelines.train.faults import FaultInjector
from pipelines.train.model import build_method
from pipelines.train.step import NonFiniteLossError, Throughput, TrainStep, place

log = logging.getLogger(__name__)


def _logger(cfg: Config, loop_config: dict[str, Any], rank: int):
    if rank != 0 or not loop_config.get("run_id"):
        return None
    # the logger's own thread retries with backoff; MLflow's default of 7 HTTP retries with
    # exponential sleeps would hold a batch for minutes after the server is back
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from pipelines.tracking.checkpoint_records import CheckpointRecords
    from pipelines.tracking.metric_logger import MetricLogger

    records = CheckpointRecords(loop_config.get("run_dir", ""), cfg.train.keep_checkpoints)
    return MetricLogger(
        loop_config["tracking_uri"],
        loop_config["run_id"],
        cfg.tracking.flush_seconds,
        True,
        checkpoints=records,
    )


def _monitor(cfg: Config, loop_config: dict[str, Any], rank: int, device: torch.device):
    if rank != 0 or not cfg.eval.knn_every_epochs or not loop_config.get("knn_monitor"):
        return None
    return KnnMonitor(
        ray.train.get_dataset_shard("knn_bank"),
        ray.train.get_dataset_shard("knn_query"),
        loop_config["num_classes"],
        cfg.views.mean,
        cfg.views.std,
        cfg.eval.knn_k,
        cfg.eval.knn_temperature,
        cfg.eval.batch_size,
        device,
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config``: ``cfg`` (plain-data Config), ``steps_per_epoch``, ``run_dir`` (where
    checkpoints go), ``num_classes``, ``knn_monitor`` (bool: ``knn_bank``/``knn_query`` datasets
    exist), and ``run_id`` plus ``tracking_uri`` for metrics from rank 0. Optional, for
    population-based sweeps (``tuning/``): ``init_checkpoint`` (a checkpoint URI to start from
    when this run has none of its own, e.g. another trial's) and ``stop_epoch`` (end this fit
    after that many epochs of the schedule, with a checkpoint; the schedule still spans
    ``train.epochs``)."""
    cfg = build_config(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.torch_threads)
    if cfg.train.batch_size % (world * cfg.train.accumulate_steps):
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must divide evenly over {world} workers × "
            f"train.accumulate_steps={cfg.train.accumulate_steps}"
        )
    per_worker_batch = cfg.train.batch_size // world
    spe = loop_config["steps_per_epoch"]
    total_steps = spe * cfg.train.epochs
    run_dir = loop_config.get("run_dir", "")

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    method = place(build_method(cfg), cfg, device)
    trainer = TrainStep(method, cfg, device, total_steps, spe, loop_config.get("num_classes", 0))
    metrics_log = _logger(cfg, loop_config, rank)

    step, start_epoch, offset, last_checkpoint = 0, 0, 0, None
    resume = ray.train.get_checkpoint()
    if resume is None and loop_config.get("init_checkpoint"):
        resume = ray.train.Checkpoint(loop_config["init_checkpoint"])
    if resume is not None:
        with resume.as_directory() as d:
            state = load_state(d, map_location=device)
        rngs = state.get("rng")
        own = rngs[rank] if isinstance(rngs, list) and rank < len(rngs) else None
        trainer.load_state_dict(state, own)
        step = state["step"]
        done_in_epoch = state.get("epoch_step", spe)
        start_epoch, offset = (
            (state["epoch"] + 1, 0) if done_in_epoch >= spe else (state["epoch"], done_in_epoch)
        )
        last_checkpoint = f"{run_dir}/{os.path.basename(resume.path)}" if run_dir else resume.path
        if metrics_log is not None:
            metrics_log.requeue(state.get("pending_metrics", []))
            metrics_log.log({"resumed_from_step": step}, step)
        log.info("rank %d resumed from %s at step %d", rank, last_checkpoint, step)
    resumed_from = step

    def checkpoint(epoch: int, epoch_step: int, metrics: dict[str, Any]) -> str:
        """Every rank calls this together: rank 0 writes and reports the checkpoint."""
        rngs = gather_rng(capture_rng(trainer.generator))
        name = f"checkpoint_{step:09d}"
        uri = f"{run_dir}/{name}"
        if rank != 0:
            ray.train.report(metrics, checkpoint_dir_name=name)
            return uri
        pending = []
        if metrics_log is not None:
            metrics_log.flush(timeout=2.0)
            pending = metrics_log.pending(max_step=step)
        state = {
            **trainer.state_dict(),
            "rng": rngs,
            "step": step,
            "epoch": epoch,
            "epoch_step": epoch_step,
            "config": redact_tree(loop_config["cfg"]),  # no credentials in checkpoint files
            "pending_metrics": pending,
        }
        with tempfile.TemporaryDirectory() as d:
            save_state(d, state)
            ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)
            if metrics_log is not None:
                record(metrics_log, cfg, loop_config, d, uri, step, epoch)
        return uri

    fault = FaultInjector(cfg.train.fail_at_step, cfg.train.fail_rank, rank, run_dir)
    monitor = _monitor(cfg, loop_config, rank, device)
    shard = ray.train.get_dataset_shard("train")
    meter, epoch_meter = Throughput(), Throughput()  # since the last log line; this epoch
    end_epoch = min(cfg.train.epochs, loop_config.get("stop_epoch") or cfg.train.epochs)
    for epoch in range(start_epoch, end_epoch):
        budget = spe - (offset if epoch == start_epoch else 0)
        epoch_losses: list[float] = []
        epoch_meter.reset()
        batches = iter(
            shard.iter_torch_batches(
                batch_size=per_worker_batch, drop_last=True, prefetch_batches=2
            )
        )
        for i in range(budget):
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - t0
            meter.wait += waited
            epoch_meter.wait += waited
            if batch is None:
                log.warning("epoch %d ended after %d of %d steps (rows skipped?)", epoch, i, budget)
                break
            fault.maybe_fire(step)
            labels = batch.pop("label", None)  # labels feed the probe, never the loss
            try:
                result = trainer(batch, step, labels)
            except NonFiniteLossError as e:
                where = last_checkpoint or "none yet (no checkpoint was written before this step)"
                raise NonFiniteLossError(f"{e}; last good checkpoint: {where}") from None
            step += 1
            meter.images += per_worker_batch * world
            epoch_meter.images += per_worker_batch * world
            epoch_losses.append(result.loss)
            if metrics_log is not None and step % cfg.train.log_every_steps == 0:
                bad = bad_image_count(loop_config.get("bad_images_counter", ""))
                metrics_log.log(
                    {**result.metrics, **meter.summary(), "epoch": epoch, "bad_images": bad}, step
                )
                meter.reset()
            every = cfg.train.checkpoint_every_steps
            if every and step % every == 0 and i < budget - 1:
                recent = sum(epoch_losses) / len(epoch_losses)
                report = {"epoch": epoch, "step": step, "resumed_from_step": resumed_from}
                last_checkpoint = checkpoint(
                    epoch, spe - budget + i + 1, {**report, "loss": recent}
                )

        metrics = {
            "epoch": epoch,
            "step": step,
            "resumed_from_step": resumed_from,
            "loss": sum(epoch_losses) / max(1, len(epoch_losses)),
        }
        throughput = epoch_meter.summary()
        if monitor is not None and (epoch + 1) % cfg.eval.knn_every_epochs == 0:
            metrics["monitor_knn_top1"] = monitor(trainer.method.encoder)
        metrics["images_per_sec"] = throughput["images_per_sec"]
        if metrics_log is not None:
            # epoch_* names: the per-step images_per_sec may land on the same step
            epoch_metrics = {
                "epoch_loss": metrics["loss"],
                "epoch_images_per_sec": throughput["images_per_sec"],
                "epoch_data_wait_fraction": throughput["data_wait_fraction"],
            }
            if "monitor_knn_top1" in metrics:
                epoch_metrics["monitor_knn_top1"] = metrics["monitor_knn_top1"]
            metrics_log.log(epoch_metrics, step)
        if rank == 0:
            # sys.stdout.write, not print: Ray Train patches print and would echo it twice
            knn = metrics.get("monitor_knn_top1")
            sys.stdout.write(
                f"sslpipe: epoch {epoch + 1}/{cfg.train.epochs}  step {step}/{total_steps}  "
                f"loss {metrics['loss']:.4f}  {throughput['images_per_sec']:.0f} images/s  "
                f"data wait {throughput['data_wait_fraction']:.0%}"
                + (f"  kNN {knn:.3f}" if knn is not None else "")
                + "\n"
            )
            sys.stdout.flush()
        every = cfg.train.checkpoint_every_steps
        save = (
            epoch == end_epoch - 1
            or (epoch + 1) % cfg.train.checkpoint_every_epochs == 0
            or (every > 0 and step % every == 0)
        )
        if save:
            last_checkpoint = checkpoint(epoch, spe, metrics)
        else:
            ray.train.report(metrics)
    if metrics_log is not None:
        metrics_log.close(timeout=10.0)  # the rest travels in the last checkpoint's state


def record(
    metrics_log, cfg: Config, loop_config: dict[str, Any], d: str, uri: str, step: int, epoch: int
) -> None:
    """Note a persisted checkpoint in the MLflow run; copy its files when the config asks."""
    from pipelines.tracking.runs import log_artifacts

    metrics_log.record_checkpoint(uri, step, epoch)
    if cfg.tracking.log_checkpoint_artifacts:
        try:
            name = os.path.basename(uri)
            log_artifacts(
                loop_config["run_id"], loop_config["tracking_uri"], d, f"checkpoints/{name}"
            )
        except Exception as e:  # the checkpoint itself is safe in storage; say so and go on
            log.warning("could not copy checkpoint %s into MLflow: %s", uri, e)
