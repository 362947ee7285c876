"""The per-worker training function Ray Train runs: one process of the DDP group.

Ray calls here are few: the context (rank, device), the dataset shard, the checkpoint to resume
from, and ``ray.train.report``. Everything else is :class:`pipelines.train.step.TrainStep`.
"""

import logging
import sys
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines.config import build_config
from pipelines.data.bad_images import bad_image_count
from pipelines.train.checkpoint import load_state, save_state
from pipelines.train.step import NonFiniteLossError, Throughput, TrainStep, build_method, place

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config``: ``cfg`` (plain-data Config), ``steps_per_epoch``, ``run_dir`` (where
    checkpoints go), and ``run_id`` plus ``tracking_uri`` for metrics from rank 0."""
    cfg = build_config(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.torch_threads)
    if cfg.train.batch_size % world:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must divide evenly over {world} workers"
        )
    per_worker_batch = cfg.train.batch_size // world
    steps_per_epoch = loop_config["steps_per_epoch"]
    total_steps = steps_per_epoch * cfg.train.epochs

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    method = place(build_method(cfg), cfg, device)
    trainer = TrainStep(method, cfg, device, total_steps, steps_per_epoch)

    step, start_epoch, last_checkpoint = 0, 0, None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            state = load_state(d, map_location=device)
        trainer.load_state_dict(state)
        step, start_epoch = state["step"], state["epoch"] + 1
        last_checkpoint = resume.path
        log.info("rank %d resumed from %s at step %d", rank, resume.path, step)
    resumed_from = step

    metrics_log = None
    if rank == 0 and loop_config.get("run_id"):
        from pipelines.tracking import MetricLogger

        metrics_log = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"])

    shard = ray.train.get_dataset_shard("train")
    meter, epoch_meter = Throughput(), Throughput()  # since the last log line; this epoch
    epoch_losses: list[float] = []
    for epoch in range(start_epoch, cfg.train.epochs):
        epoch_losses.clear()
        epoch_meter.reset()
        batches = iter(
            shard.iter_torch_batches(
                batch_size=per_worker_batch, drop_last=True, prefetch_batches=2
            )
        )
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - t0
            meter.wait += waited
            epoch_meter.wait += waited
            if batch is None:
                break
            batch.pop("label", None)  # labels ride along for monitors, never for the loss
            try:
                result = trainer(batch, step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e}; last good checkpoint: {last_checkpoint or 'none yet'}"
                ) from None
            step += 1
            meter.images += per_worker_batch * world
            epoch_meter.images += per_worker_batch * world
            epoch_losses.append(result.loss)
            if metrics_log is not None and step % cfg.train.log_every_steps == 0:
                bad = bad_image_count(loop_config.get("bad_images_counter", ""))
                metrics_log.log(
                    {**result.metrics, **meter.summary(), "epoch": epoch, "bad_images": bad}, step
                )
                metrics_log.flush()
                meter.reset()

        metrics = {
            "epoch": epoch,
            "step": step,
            "resumed_from_step": resumed_from,
            "loss": sum(epoch_losses) / max(1, len(epoch_losses)),
        }
        is_last = epoch == cfg.train.epochs - 1
        save = is_last or (epoch + 1) % cfg.train.checkpoint_every_epochs == 0
        throughput = epoch_meter.summary()
        if metrics_log is not None:
            metrics_log.log({"epoch_loss": metrics["loss"], **throughput}, step)
            metrics_log.flush()
        if rank == 0:
            # sys.stdout.write, not print: Ray Train patches print and would echo it twice
            sys.stdout.write(
                f"sslpipe: epoch {epoch + 1}/{cfg.train.epochs}  step {step}/{total_steps}  "
                f"loss {metrics['loss']:.4f}  {throughput['images_per_sec']:.0f} images/s  "
                f"data wait {throughput['data_wait_fraction']:.0%}\n"
            )
            sys.stdout.flush()
        if save and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                state = {
                    **trainer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "config": loop_config["cfg"],
                }
                save_state(d, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if save:
            last_checkpoint = f"epoch {epoch} (step {step}) under {loop_config.get('run_dir')}"
