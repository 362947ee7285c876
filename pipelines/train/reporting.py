"""What a worker reports besides Ray's metrics: the meters of the log line and the epoch, their
read-back from the device, and rank 0's MLflow side (the metric logger, checkpoint records).
Nothing here imports Ray."""

import logging
import os
import time
from typing import Any

import torch

from pipelines.config.schema import Config

log = logging.getLogger(__name__)


class Throughput:
    """Images per second and the fraction of wall time spent waiting for data."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.wait = 0.0
        self.images = 0

    def add(self, wait: float, images: int) -> None:
        self.wait += wait
        self.images += images

    def summary(self) -> dict[str, float]:
        elapsed = max(1e-9, time.perf_counter() - self.start)
        return {"images_per_sec": self.images / elapsed, "data_wait_fraction": self.wait / elapsed}


class LossMean:
    """The mean of the per-step losses since the last :meth:`reset`, summed on the device:
    adding a step costs no host sync, :meth:`read` one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def mean(self) -> torch.Tensor | float:
        """On the device; 0.0 before any step."""
        return self.total / self.count if self.total is not None else 0.0

    def read(self) -> float:
        return float(self.mean())


def to_floats(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Every value as a float, the tensors (0-dim, any device) read back in one copy."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    read: dict[str, float] = {}
    if tensors:
        # stacked on the accelerator when there is one: one copy back, not one per tensor
        devices = {v.device for v in tensors.values()}
        device = next((d for d in devices if d.type != "cpu"), torch.device("cpu"))
        stacked = torch.stack([v.detach().float().reshape(()).to(device) for v in tensors.values()])
        read = dict(zip(tensors, stacked.tolist(), strict=True))
    return {k: read[k] if k in tensors else float(v) for k, v in metrics.items()}


def metric_logger(cfg: Config, loop_config: dict[str, Any], rank: int):
    """Rank 0's MetricLogger when the run has an MLflow run; None elsewhere."""
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


def record_checkpoint(
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
