"""How the global batch is cut: over the workers a run has now, then into micro-batches.

``train.batch_size`` is the batch of one optimizer step over all workers, whatever their count:
the learning rate, the schedules and the steps per epoch follow from it alone, so a run whose
worker group Ray Train resizes (``train.workers: [min, max]``) keeps its recipe. At every
(re)start each worker takes ``batch_size / world`` rows per step. They must be equal: DDP
averages the workers' gradients with equal weights, and the methods that gather across workers
(SimCLR's negatives, MoCo's shuffle-BN, global BatchNorm) need equal shapes. So the batch must
divide evenly over every worker count the range allows; ``pipelines.config.checks`` refuses a
config where one does not.

Micro-batches (gradient accumulation), two ways:

- ``train.accumulate_steps = A`` (the default, 1): every worker cuts its share into A. What one
  forward sees over all workers, ``batch_size / A``, is then the same at every worker count, so
  gathered losses and ``train.sync_batchnorm`` see the same batch after a resize; only
  per-worker BatchNorm statistics and a worker's memory follow its share.
- ``train.micro_batch_size = m``: a worker cuts its share into the fewest equal micro-batches of
  at most m rows, so a smaller group accumulates more instead of holding more in memory. What
  one forward sees then changes with the worker count (fewer negatives for a gathered
  contrastive loss), which is why it is opt-in.

Nothing here imports torch or Ray.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """One worker's cut of the global batch at a given worker count."""

    world: int  # workers in the group
    per_worker: int  # rows each worker takes per optimizer step
    accumulate: int  # micro-batches per optimizer step (forward/backward passes)

    @property
    def micro(self) -> int:
        """Rows in one forward/backward pass of one worker."""
        return self.per_worker // self.accumulate


def worker_range(workers: int | tuple[int, int]) -> tuple[int, int]:
    """``train.workers`` as (min, max): a fixed count is a range of one."""
    if isinstance(workers, int):
        return workers, workers
    low, high = workers
    return low, high


def batch_plan(
    batch_size: int, world: int, accumulate_steps: int = 1, micro_batch_size: int = 0
) -> BatchPlan:
    """The cut at ``world`` workers; ``ValueError`` naming the keys when there is none.

    >>> batch_plan(256, 4)
    BatchPlan(world=4, per_worker=64, accumulate=1)
    >>> batch_plan(256, 2, micro_batch_size=48)  # 128 rows in micro-batches of at most 48
    BatchPlan(world=2, per_worker=128, accumulate=4)
    """
    if world < 1:
        raise ValueError(f"a worker group needs at least 1 worker, got {world}")
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} does not divide evenly over {world} workers"
        )
    per_worker = batch_size // world
    if micro_batch_size > 0:
        # the fewest equal parts of at most micro_batch_size rows (per_worker parts of 1 row
        # always qualify)
        first = math.ceil(per_worker / micro_batch_size)
        parts = next(p for p in range(first, per_worker + 1) if per_worker % p == 0)
        return BatchPlan(world, per_worker, parts)
    if per_worker % accumulate_steps:
        raise ValueError(
            f"train.batch_size={batch_size} over {world} workers is {per_worker} rows each, "
            f"which does not divide into train.accumulate_steps={accumulate_steps} micro-batches"
        )
    return BatchPlan(world, per_worker, accumulate_steps)


def plan_for(train, world: int) -> BatchPlan:
    """:func:`batch_plan` with a ``TrainConfig``'s batch settings."""
    return batch_plan(train.batch_size, world, train.accumulate_steps, train.micro_batch_size)


def workable_batch(batch_size: int, low: int, high: int, accumulate_steps: int = 1) -> int:
    """The smallest batch of at least ``batch_size`` that divides evenly over every worker
    count from ``low`` to ``high`` (each share into ``accumulate_steps``): a suggestion for
    an error message."""
    step = math.lcm(*range(low, high + 1)) * accumulate_steps
    return math.ceil(batch_size / step) * step


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``rows``. Ray Data gives each of W workers
    ``rows // W`` rows (``streaming_split(equal=True)``) in batches of ``batch_size / W``:
    ``(rows // W) // (batch_size / W) == rows // batch_size``, the same at every worker count,
    so a resized run keeps its step count."""
    return rows // batch_size


def describe_workers(workers: int | tuple[int, int]) -> str:
    """``2 workers``, ``1 worker``, or ``1-4 workers (elastic)`` for an elastic range."""
    low, high = worker_range(workers)
    if low == high:
        return f"{low} worker{'s' if low != 1 else ''}"
    return f"{low}-{high} workers (elastic)"
