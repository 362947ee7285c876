"""Counting undecodable images across Ray Data tasks, for the ``bad_images`` metric.

Decoding runs in stateless Ray Data tasks spread over the cluster; the count has to outlive
each of them and be readable from the training loop. One small named actor per training run
holds it: tasks that skip images tell it (one call per batch, only when something was skipped,
so the common path costs nothing), rank 0 of the training loop reads it when it logs, and the
driver reads the final count and the first keys at the end. The count is of distinct keys: a
bad record met again in the next epoch is the same bad image.

The same counter, under another name, counts the rows ``views.decode_device: train`` could not
send to the training device and decoded on the CPU side instead (``device_views.py``).
"""

import logging
import uuid
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

MAX_KEYS = 1000  # keys in the report; the count is exact regardless
_NAMESPACE = "sslpipe"
_handles: dict[str, ray.actor.ActorHandle] = {}  # keeps the driver's counters alive


@ray.remote(num_cpus=0)
class BadImageCounter:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def add(self, keys: list[str]) -> None:
        self.keys.update(keys)

    def snapshot(self) -> tuple[int, list[str]]:
        return len(self.keys), sorted(self.keys)[:MAX_KEYS]


@dataclass(frozen=True)
class BadImageReport:
    count: int
    keys: list[str]  # the first MAX_KEYS


def create_counter(run: str = "", kind: str = "bad-images") -> str:
    """Start a counter (on the driver) and return its name, to hand to tasks and workers;
    ``kind`` tells counters of one run apart (``bad-images``, ``decode-fallbacks``)."""
    name = f"sslpipe-{kind}-{run or uuid.uuid4().hex[:12]}"
    # on the driver's node (the head, in a Ray job): a worker node lost mid-run must not take
    # the count with it while the run resumes on the remaining nodes
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = BadImageCounter.options(
        name=name, namespace=_NAMESPACE, get_if_exists=True, scheduling_strategy=here
    ).remote()
    _handles[name] = handle
    return name


def _lookup(name: str) -> ray.actor.ActorHandle | None:
    if not name:
        return None
    try:
        return ray.get_actor(name, namespace=_NAMESPACE)
    except ValueError:  # no such actor: counting was not set up for this dataset
        return None


def record_bad_images(name: str, keys: list[str]) -> None:
    """From a decoding task or a train worker: add ``keys`` to the counter ``name`` (no-op
    without one)."""
    if not keys:  # the common case costs no actor lookup
        return
    counter = _lookup(name)
    if counter is not None:
        # waited for, so a count read after the data is consumed includes every skip
        ray.get(counter.add.remote(keys))


def bad_image_report(name: str) -> BadImageReport:
    counter = _lookup(name)
    if counter is None:
        return BadImageReport(0, [])
    count, keys = ray.get(counter.snapshot.remote())
    return BadImageReport(count, keys)


def bad_image_count(name: str) -> int:
    """The images skipped so far under counter ``name`` (0 when there is none)."""
    return bad_image_report(name).count
