"""Training progress from rank 0 to the driver's console, through one small named actor.

Rank 0 posts a few numbers on its logging steps and at each epoch's end (fire-and-forget calls,
no wait in the training loop); a thread in the driver polls the board while ``trainer.fit()``
blocks and feeds :class:`pipelines.tracking.console.TrainingBar`. Workers' own output stays in
Ray's logs, so the console shows this and nothing else.
"""

import contextlib
import threading
import time
import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.tracking.console import TrainingBar

_NAMESPACE = "sslpipe"
POLL_SECONDS = 0.5


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def post(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def since(self, n: int) -> list[dict[str, Any]]:
        return self.events[n:]


def create_board(run: str = "") -> tuple[str, ray.actor.ActorHandle]:
    """A board on the driver's node; its name goes to the workers in the loop config."""
    name = f"sslpipe-progress-{run or 'run'}-{uuid.uuid4().hex[:8]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = ProgressBoard.options(
        name=name, namespace=_NAMESPACE, get_if_exists=True, scheduling_strategy=here
    ).remote()
    return name, handle


def post(name: str, event: dict[str, Any]) -> None:
    """From rank 0: put ``event`` on the board ``name``, stamped with this host's clock
    (``time``); no board, no-op; never waits."""
    if not name:
        return
    with contextlib.suppress(ValueError):  # the board is gone (its driver stopped following)
        ray.get_actor(name, namespace=_NAMESPACE).post.remote({**event, "time": time.time()})


class Follower:
    """Driver side: a thread that moves the board's events onto a :class:`TrainingBar`, and
    keeps when rank 0 finished its first step and its last epoch (``first_step_at``,
    ``last_epoch_at``: wall-clock seconds, None until seen)."""

    def __init__(self, board: ray.actor.ActorHandle, bar: TrainingBar) -> None:
        self.board, self.bar = board, bar
        self.seen = 0
        self.first_step_at: float | None = None
        self.last_epoch_at: float | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sslpipe-progress", daemon=True)

    def __enter__(self) -> "Follower":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.drain()
        self.bar.close()

    def _run(self) -> None:
        while not self.stopping.wait(POLL_SECONDS):
            self.drain()

    def drain(self) -> None:
        with self.lock:
            try:
                events = ray.get(self.board.since.remote(self.seen), timeout=5)
            except Exception:  # a slow or lost board must not take the run down
                return
            self.seen += len(events)
            self.show(events)

    def show(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            if e["kind"] == "first_step":
                if self.first_step_at is None:
                    self.bar.started()
                self.first_step_at = self.first_step_at or e.get("time")
            elif e["kind"] == "step":
                self.bar.update(e["step"], e["epoch"], e["loss"], e["images_per_sec"], e["wait"])
            else:
                self.last_epoch_at = e.get("time")
                self.bar.epoch_done(
                    e["epoch"], e["step"], e["loss"], e["images_per_sec"], e["wait"], e.get("knn")
                )

    def timings(self, started: float) -> dict[str, float]:
        """Where the run's wall time went, from ``started`` to now: ``startup_s`` (Ray, the
        dataset, workers, up to the end of the first step), ``training_s`` (to the end of the
        last epoch), ``wrap_up_s`` (evaluation, logging, registration: the rest so far), and
        ``first_step_at`` (Unix time) for a caller timing from its own start. Empty when the
        marks were not seen (a run with no steps to do)."""
        if self.first_step_at is None or self.last_epoch_at is None:
            return {}
        now = time.time()
        return {
            "startup_s": round(self.first_step_at - started, 1),
            "training_s": round(self.last_epoch_at - self.first_step_at, 1),
            "wrap_up_s": round(now - self.last_epoch_at, 1),
            "first_step_at": round(self.first_step_at, 3),
        }
