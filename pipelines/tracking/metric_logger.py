"""Rank 0's metrics on their way to MLflow: :class:`MetricLogger`, a buffer a background thread
sends in batches. An unreachable tracking server costs training nothing, and what could not be
sent is kept, retried, carried in checkpoints (``pending_metrics``) and finally sent by the
driver. Checkpoint records go the same way (:meth:`MetricLogger.record_checkpoint`).

MLflow is imported, and its client made, by the first send: on rank 0 that happens in the
background thread while the first batches arrive, not before the first step (importing MLflow
and opening its store cost rank 0 ~1.7 s on an idle 2-core machine).
"""

import logging
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from pipelines.tracking.checkpoint_records import CheckpointRecords, checkpoint_tags
from pipelines.tracking.secrets import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


class Point(NamedTuple):
    """One buffered metric value (MLflow's ``Metric`` fields, made at send time)."""

    key: str
    value: float
    timestamp: int
    step: int


class MetricLogger:
    """Buffered metrics and tags for one run. With ``background`` a thread sends them every
    ``flush_seconds`` (backing off while the server is unreachable); without, :meth:`flush`
    sends them in the caller. Nothing is dropped on failure."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        flush_seconds: float = 5.0,
        background: bool = False,
        client: "MlflowClient | None" = None,
        checkpoints: CheckpointRecords | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.client = client  # made by the first send (see the module docstring)
        self.run_id = run_id
        self.checkpoints = checkpoints
        self.flush_seconds = flush_seconds
        self._metrics: list[Point] = []
        self._tags: dict[str, str] = {}
        self._cond = threading.Condition()
        self._sending = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.failures = 0
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
            self._thread.start()

    def log(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        with self._cond:
            self._metrics += [Point(k, float(v), now, step) for k, v in metrics.items()]

    def set_tags(self, tags: dict[str, str]) -> None:
        with self._cond:
            self._tags.update(redact(tags))

    def record_checkpoint(self, uri: str, step: int, epoch: int) -> None:
        """Tag a persisted checkpoint, and mark those it pushed out of storage as pruned (with
        ``checkpoints``; see :mod:`pipelines.tracking.checkpoint_records`)."""
        if self.checkpoints is not None:
            self.set_tags(self.checkpoints.add(uri, step, epoch))
        else:
            self.set_tags(checkpoint_tags(uri, step, epoch))

    def pending(self, max_step: int | None = None) -> list[list]:
        """Unsent metrics as ``[key, value, timestamp, step]`` (for a checkpoint)."""
        with self._cond:
            return [
                [m.key, m.value, m.timestamp, m.step]
                for m in self._metrics
                if max_step is None or m.step <= max_step
            ]

    def requeue(self, items: list[list]) -> None:
        """Metrics from :meth:`pending`, sent again with their own timestamps: SQL stores keep
        an identical (key, value, timestamp, step) once, so a value that did arrive meanwhile is
        not duplicated."""
        with self._cond:
            self._metrics += [Point(k, float(v), int(t), int(s)) for k, v, t, s in items]

    def _empty(self) -> bool:
        return not self._metrics and not self._tags

    def _send_once(self) -> bool:
        """Send one batch; True when it went (or nothing was left)."""
        with self._sending:
            with self._cond:
                metrics = self._metrics[:1000]
                tags = dict(list(self._tags.items())[:100])
            if not metrics and not tags:
                return True
            try:
                from mlflow.entities import Metric, RunTag

                self.client = self.client or _client(self.tracking_uri)
                self.client.log_batch(
                    self.run_id,
                    metrics=[Metric(*m) for m in metrics],
                    tags=[RunTag(k, v) for k, v in tags.items()],
                )
            except Exception as e:  # the tracking server may be briefly unreachable
                self.failures += 1
                log.warning("MLflow unreachable (%s); keeping %d metrics", e, len(self._metrics))
                return False
            with self._cond:
                del self._metrics[: len(metrics)]  # only this sender removes from the front
                for k, v in tags.items():
                    if self._tags.get(k) == v:
                        del self._tags[k]
                self._cond.notify_all()
            return True

    def _send_all(self) -> bool:
        while True:
            with self._cond:
                if self._empty():
                    return True
            if not self._send_once():
                return False

    def _run(self) -> None:
        delay = self.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            delay = self.flush_seconds if self._send_all() else min(max(1.0, delay) * 2, 60.0)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered; True when the buffer is empty. With a background thread this
        wakes the thread and waits for it at most ``timeout`` seconds (``None``: not at all), so
        training never blocks longer; without, it sends here, retrying with backoff until
        ``timeout`` (``None``: until it succeeds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._wake.set()
            with self._cond:
                return self._cond.wait_for(self._empty, timeout or 0.0)
        delay = 0.5
        while not self._send_all():
            if deadline is not None and time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        return True

    def close(self, timeout: float | None = None) -> bool:
        ok = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        return ok


def _client(tracking_uri: str) -> "MlflowClient":
    from mlflow import MlflowClient

    from pipelines.tracking.runs import absolute_uri

    return MlflowClient(absolute_uri(tracking_uri))
