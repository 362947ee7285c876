"""The per-worker training function Ray Train runs: one process of the DDP group.

:func:`train_loop_per_worker` reads as the run does: start, resume, then per epoch train,
summarise and checkpoint. The Ray calls are the context (rank, device), the dataset shards, the
checkpoint to resume from and ``ray.train.report``; the optimisation itself is
:class:`pipelines.train.step.TrainStep`.

Resuming mid-epoch: Ray Data's stream cannot be replayed (file order, decode tasks and crops are
not a pure function of a seed), so the interrupted epoch continues on a fresh pass over the data
cut at the steps that epoch still owes. Every epoch keeps ``steps_per_epoch`` optimizer steps and
the run its exact total, and the schedules, weights, optimizer and train-side random state are
exactly those of the checkpoint; only which images fill the rest of that one epoch differs.

Host syncs: besides the step's one finiteness flag (see ``step.py``), losses stay on the device,
summed there for the log line and the epoch mean, and are read back only when rank 0 logs (every
``train.log_every_steps``), a checkpoint is written or an epoch ends.
"""

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines.config.layers import build_config
from pipelines.config.schema import Config
from pipelines.data.stream.bad_images import bad_image_count, record_bad_images
from pipelines.data.stream.device_views import decode_views
from pipelines.eval.monitors import KnnMonitor
from pipelines.tracking.secrets import redact_tree
from pipelines.train import progress
from pipelines.train.batching import BatchPlan, plan_for
from pipelines.train.checkpoint import capture_rng, gather_rng, load_state, save_state
from pipelines.train.drain import DrainWatch, deadline_text
from pipelines.train.faults import FaultInjector
from pipelines.train.model import build_method
from pipelines.train.reporting import (
    LossMean,
    Throughput,
    metric_logger,
    record_checkpoint,
    to_floats,
)
from pipelines.train.step import NonFiniteLossError, StepResult, TrainStep, place

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker's run: its place in the group, its :class:`TrainStep`, and where it stands."""

    cfg: Config
    loop_config: dict[str, Any]  # as train_loop_per_worker received it
    rank: int
    world: int
    trainer: TrainStep
    metrics_log: Any = None  # rank 0's MetricLogger when the run has an MLflow run, else None
    step: int = 0  # optimizer steps done in the whole run
    resumed_from: int = 0  # the step this attempt started at
    last_checkpoint: str | None = None  # URI of the newest checkpoint, for error messages
    fault: FaultInjector | None = None
    # this worker's cut of the global batch at this attempt's world size (start() sets it)
    plan: BatchPlan | None = None
    drain: DrainWatch | None = None
    checkpointed_at: int = -1  # the step of the last checkpoint this attempt wrote
    # since the last log line (it may span epochs: logging steps count over the whole run)
    window: Throughput = field(default_factory=Throughput)
    window_loss: LossMean = field(default_factory=LossMean)

    @property
    def steps_per_epoch(self) -> int:
        return self.loop_config["steps_per_epoch"]

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.train.epochs

    @property
    def run_dir(self) -> str:
        return self.loop_config.get("run_dir", "")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config``: ``cfg`` (plain-data Config), ``steps_per_epoch``, ``run_dir`` (where
    checkpoints go), ``num_classes``, ``knn_monitor`` (bool: ``knn_bank``/``knn_query`` datasets
    exist), and ``run_id`` plus ``tracking_uri`` for metrics from rank 0. Optional, for
    population-based sweeps (``tuning/``): ``init_checkpoint`` (a checkpoint URI to start from
    when this run has none of its own, e.g. another trial's) and ``stop_epoch`` (end this fit
    after that many epochs of the schedule, with a checkpoint; the schedule still spans
    ``train.epochs``). ``stream_epochs`` > 1: the dataset streams that many passes in one
    execution (``source.stream_files``), read here through one iterator cut into epochs of
    ``steps_per_epoch`` steps; otherwise every epoch is a new execution."""
    cfg = build_config(loop_config["cfg"])
    ctx = ray.train.get_context()
    w = start(cfg, loop_config, ctx.get_world_rank(), ctx.get_world_size())
    first_epoch, done = resume(w)
    monitor = knn_monitor(w)
    shard = ray.train.get_dataset_shard("train")
    end_epoch = min(cfg.train.epochs, loop_config.get("stop_epoch") or cfg.train.epochs)
    stream = epoch_batches(w, shard) if loop_config.get("stream_epochs", 1) > 1 else None
    for epoch in range(first_epoch, end_epoch):
        batches = stream if stream is not None else epoch_batches(w, shard)
        loss, throughput = train_epoch(w, batches, epoch, done if epoch == first_epoch else 0)
        metrics = summarise_epoch(w, epoch, loss, throughput, monitor)
        every = cfg.train.checkpoint_every_steps
        due = (
            epoch == end_epoch - 1
            or (epoch + 1) % cfg.train.checkpoint_every_epochs == 0
            or (every > 0 and w.step % every == 0)
        )
        if due and w.checkpointed_at != w.step:  # not already written for a drain
            checkpoint(w, epoch, w.steps_per_epoch, metrics)
        else:
            ray.train.report(metrics)
    if w.metrics_log is not None:
        w.metrics_log.close(timeout=10.0)  # the rest travels in the last checkpoint's state


def start(cfg: Config, loop_config: dict[str, Any], rank: int, world: int) -> Worker:
    """The model on this worker's device, with identical initial weights on every rank, and
    this worker's share of the global batch at the group's size of this attempt (an elastic
    run's group may differ from the last attempt's; the global batch does not)."""
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.torch_threads)
    plan = plan_for(cfg.train, world)
    spe = loop_config["steps_per_epoch"]
    torch.manual_seed(cfg.train.seed)
    method = place(build_method(cfg), cfg, device)
    classes = loop_config.get("num_classes", 0)
    trainer = TrainStep(method, cfg, device, spe * cfg.train.epochs, spe, classes, plan.accumulate)
    run_dir = loop_config.get("run_dir", "")
    fault = FaultInjector(cfg.train.fail_at_step, cfg.train.fail_rank, rank, run_dir)
    metrics_log = metric_logger(cfg, loop_config, rank)
    drain = DrainWatch(cfg.train.drain_check_steps, ray.train.get_preemption_info)
    if rank == 0:
        log.info(
            "%d workers: %d rows each per step in %d micro-batches",
            world,
            plan.per_worker,
            plan.accumulate,
        )
    return Worker(
        cfg, loop_config, rank, world, trainer, metrics_log, fault=fault, plan=plan, drain=drain
    )


def resume(w: Worker) -> tuple[int, int]:
    """Restore weights, optimizer, schedules' step and this rank's random state from the run's
    latest checkpoint (or ``init_checkpoint``), if any. Returns the epoch to start in and the
    steps of it already done."""
    found = ray.train.get_checkpoint()
    if found is None and w.loop_config.get("init_checkpoint"):
        found = ray.train.Checkpoint(w.loop_config["init_checkpoint"])
    if found is None:
        if w.metrics_log is not None:
            w.metrics_log.log({"workers": w.world}, 0)
        return 0, 0
    with found.as_directory() as d:
        state = load_state(d, map_location=w.trainer.device)
    rngs = state.get("rng")
    own = rngs[w.rank] if isinstance(rngs, list) and w.rank < len(rngs) else None
    w.trainer.load_state_dict(state, own)
    w.step = w.resumed_from = state["step"]
    name = os.path.basename(found.path)
    w.last_checkpoint = f"{w.run_dir}/{name}" if w.run_dir else found.path
    if w.metrics_log is not None:
        w.metrics_log.requeue(state.get("pending_metrics", []))
        w.metrics_log.log({"resumed_from_step": w.step, "workers": w.world}, w.step)
    log.info("rank %d resumed from %s at step %d", w.rank, w.last_checkpoint, w.step)
    done = state.get("epoch_step", w.steps_per_epoch)
    index = state["epoch"] - 1  # the checkpoint numbers epochs from 1
    if done >= w.steps_per_epoch:
        return index + 1, 0
    return index, done


def epoch_batches(w: Worker, shard: Any) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's batches of one execution of its dataset shard: uint8 views as torch tensors,
    or with ``views.decode_device: train`` encoded rows decoded into views on the training
    device here (``device_views.py``; its time counts as waiting for data)."""
    size = w.plan.per_worker
    if w.cfg.views.decode_device != "train":
        yield from shard.iter_torch_batches(batch_size=size, drop_last=True, prefetch_batches=2)
        return
    counters = w.loop_config
    for rows in shard.iter_batches(
        batch_size=size, drop_last=True, prefetch_batches=2, batch_format="numpy"
    ):
        batch, report = decode_views(rows, w.cfg.views, w.trainer.device, w.cfg.data.bad_images)
        record_bad_images(counters.get("decode_fallbacks_counter", ""), report.fallbacks)
        record_bad_images(counters.get("bad_images_counter", ""), report.skipped)
        yield batch


def train_epoch(
    w: Worker, batches: Iterator[dict[str, torch.Tensor]], epoch: int, done: int = 0
) -> tuple[float, dict[str, float]]:
    """The optimizer steps epoch ``epoch`` still owes (``steps_per_epoch - done``), from
    ``batches`` (this worker's share of each global batch). Logs every
    ``train.log_every_steps``, checkpoints every ``train.checkpoint_every_steps`` within the
    epoch (its end is the caller's). Returns the epoch's mean loss and throughput."""
    budget = w.steps_per_epoch - done
    images = w.cfg.train.batch_size  # per optimizer step, over all workers
    loss, meter = LossMean(), Throughput()
    for i in range(budget):
        t0 = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - t0
        if batch is None:
            log.warning("epoch %d ended after %d of %d steps (rows skipped?)", epoch, i, budget)
            break
        if w.step == w.resumed_from and i == 0:  # this attempt's first batch
            first_batch(w, waited, meter)
            waited = 0.0
        for m in (meter, w.window):
            m.add(waited, images)
        result = train_step(w, batch)
        if w.step == w.resumed_from + 1 and w.rank == 0:  # start-up ends here (summary timings)
            progress.post(w.loop_config.get("progress_board", ""), {"kind": "first_step"})
        loss.add(result.loss)
        w.window_loss.add(result.loss)
        if w.step % w.cfg.train.log_every_steps == 0:
            log_step(w, result, epoch)
        every = w.cfg.train.checkpoint_every_steps
        draining = drain_requested(w)
        if draining or (every and w.step % every == 0 and i < budget - 1):
            report = {"epoch": epoch + 1, "step": w.step, "resumed_from_step": w.resumed_from}
            checkpoint(w, epoch, done + i + 1, {**report, "loss": loss.read()})
    return loss.read(), meter.summary()


def first_batch(w: Worker, waited: float, meter: Throughput) -> None:
    """The wait for an attempt's first batch is the pipeline's start (its coordinator, its
    tasks' processes, the first blocks: 10-15 s on 2 cores), part of the run's start-up and not
    of the first epoch's data wait: the epoch's and the log line's meters start from the
    batch's arrival, and rank 0 logs the wait as ``first_batch_wait_s``."""
    meter.reset()
    w.window.reset()
    if w.metrics_log is not None:
        w.metrics_log.log({"first_batch_wait_s": waited}, w.step)


def drain_requested(w: Worker) -> bool:
    """Whether a node of this worker group has just been told to drain (``drain.py``): every
    rank asks at the same steps and gets rank 0's answer, so all checkpoint together."""
    info = w.drain.new_drain(w.step) if w.drain is not None else None
    if info is None:
        return False
    if w.rank == 0:
        log.warning(
            "nodes %s are draining (ranks %s, deadline %s): checkpointing at step %d",
            info.preempted_node_ids,
            info.preempted_ranks,
            deadline_text(info.deadline_ms),
            w.step,
        )
        if w.metrics_log is not None:
            w.metrics_log.log({"drain_checkpoint_step": w.step}, w.step)
    return True


def train_step(w: Worker, batch: dict[str, torch.Tensor]) -> StepResult:
    """One optimizer step; a non-finite loss stops the run naming the last good checkpoint."""
    if w.fault is not None:
        w.fault.maybe_fire(w.step)
    labels = batch.pop("label", None)  # labels feed the probe, never the loss
    try:
        result = w.trainer(batch, w.step, labels)
    except NonFiniteLossError as e:
        where = w.last_checkpoint or "none yet (no checkpoint was written before this step)"
        raise NonFiniteLossError(f"{e}; last good checkpoint: {where}") from None
    w.step += 1
    return result


def log_step(w: Worker, result: StepResult, epoch: int) -> None:
    """Rank 0's metrics line and progress: this step's schedules and extras, the mean loss and
    throughput since the last line. Every rank restarts its window, so none grows unbounded."""
    if w.rank == 0:
        values = to_floats({**result.metrics, "loss": w.window_loss.mean()})  # one host sync
        speed = w.window.summary()
        progress.post(
            w.loop_config.get("progress_board", ""),
            {
                "kind": "step",
                "step": w.step,
                "epoch": epoch + 1,
                "loss": values["loss"],
                "images_per_sec": speed["images_per_sec"],
                "wait": speed["data_wait_fraction"],
            },
        )
        if w.metrics_log is not None:
            values["bad_images"] = bad_image_count(w.loop_config.get("bad_images_counter", ""))
            fallbacks = w.loop_config.get("decode_fallbacks_counter", "")
            if fallbacks:
                values["decode_fallbacks"] = bad_image_count(fallbacks)
            w.metrics_log.log({**values, **speed, "epoch": epoch + 1}, w.step)
    w.window.reset()
    w.window_loss.reset()


def summarise_epoch(
    w: Worker,
    epoch: int,
    loss: float,
    throughput: dict[str, float],
    monitor: KnnMonitor | None,
) -> dict[str, Any]:
    """The epoch's metrics for Ray (kNN monitor included when due), logged and shown by rank 0.
    Epochs are numbered from 1 wherever a person reads them: console, MLflow, checkpoints."""
    metrics = {
        "epoch": epoch + 1,
        "step": w.step,
        "resumed_from_step": w.resumed_from,
        "loss": loss,
    }
    metrics["images_per_sec"] = throughput["images_per_sec"]
    if monitor is not None and (epoch + 1) % w.cfg.eval.knn_every_epochs == 0:
        metrics["monitor_knn_top1"] = monitor(w.trainer.method.encoder)
    if w.metrics_log is not None:
        # epoch_* names: the per-step images_per_sec may land on the same step
        logged = {
            "epoch_loss": loss,
            "epoch_images_per_sec": throughput["images_per_sec"],
            "epoch_data_wait_fraction": throughput["data_wait_fraction"],
        }
        if "monitor_knn_top1" in metrics:
            logged["monitor_knn_top1"] = metrics["monitor_knn_top1"]
        w.metrics_log.log(logged, w.step)
    if w.rank == 0:
        progress.post(
            w.loop_config.get("progress_board", ""),
            {
                "kind": "epoch",
                "step": w.step,
                "epoch": epoch + 1,
                "loss": loss,
                "images_per_sec": throughput["images_per_sec"],
                "wait": throughput["data_wait_fraction"],
                "knn": metrics.get("monitor_knn_top1"),
            },
        )
    return metrics


def checkpoint(w: Worker, epoch: int, epoch_step: int, metrics: dict[str, Any]) -> None:
    """Every rank calls this together (the random states are gathered): rank 0 writes the
    checkpoint and reports it with ``metrics``, the others report the metrics alone."""
    rngs = gather_rng(capture_rng(w.trainer.generator))
    name = f"checkpoint_{w.step:09d}"
    uri = f"{w.run_dir}/{name}"
    if w.rank != 0:
        ray.train.report(metrics, checkpoint_dir_name=name)
        w.last_checkpoint = uri
        w.checkpointed_at = w.step
        return
    pending = []
    if w.metrics_log is not None:
        w.metrics_log.flush(timeout=2.0)
        pending = w.metrics_log.pending(max_step=w.step)
    state = {
        **w.trainer.state_dict(),
        "rng": rngs,
        "step": w.step,
        "epoch": epoch + 1,  # from 1, as on the console and in MLflow
        "epoch_step": epoch_step,
        "config": redact_tree(w.loop_config["cfg"]),  # no credentials in checkpoint files
        "pending_metrics": pending,
    }
    with tempfile.TemporaryDirectory() as d:
        save_state(d, state)
        found = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=found, checkpoint_dir_name=name)
        if w.metrics_log is not None:
            record_checkpoint(w.metrics_log, w.cfg, w.loop_config, d, uri, w.step, epoch + 1)
    w.last_checkpoint = uri
    w.checkpointed_at = w.step


def knn_monitor(w: Worker) -> KnnMonitor | None:
    """Rank 0's kNN monitor over the ``knn_bank`` and ``knn_query`` datasets, when configured."""
    cfg, loop_config = w.cfg, w.loop_config
    if w.rank != 0 or not cfg.eval.knn_every_epochs or not loop_config.get("knn_monitor"):
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
        w.trainer.device,
    )
