"""A checkpoint before a draining node goes: Ray Train's preemption signal, asked at step ends.

A node told to drain (a cloud's spot preemption notice through Ray's autoscaler, or by hand:
``ray drain-node --node-id ID --reason DRAIN_NODE_REASON_PREEMPTION --reason-message spot
--deadline-remaining-seconds 60``) is marked draining in Ray's GCS with its deadline. Ray Train
2.60 watches for that itself: an actor per worker group polls the draining nodes (every
``RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S``, 5 s by default), keeps those that host the group's
workers and marks every worker. ``ray.train.get_preemption_info()`` hands rank 0's mark to every
rank (one round trip to Ray Train's synchronisation actor, a barrier), so all ranks agree on the
step at which they saw it and checkpoint together.

The loop asks every ``train.drain_check_steps`` optimizer steps, the same steps on every rank,
and checkpoints the first time a drain of new nodes shows: at most the steps since that
checkpoint are lost. Training then goes on; Ray Train's controller waits until the deadline (or
until the workers end), stops the group with a ``PreemptionError`` (counted against
``FailureConfig.max_preemption_failures``, unlimited by default, not against ``max_failures``)
and restarts it from the latest checkpoint it has registered, on the nodes left (fewer workers
for an elastic run, ``train.workers: [min, max]``).
"""

import time
from collections.abc import Callable
from typing import Any


class DrainWatch:
    """Asks ``ask`` (``ray.train.get_preemption_info``: a ``PreemptionInfo`` or None) on every
    ``every_steps``-th step; :meth:`new_drain` returns the info once per newly draining set of
    nodes."""

    def __init__(self, every_steps: int, ask: Callable[[], Any]) -> None:
        self.every_steps = every_steps
        self.ask = ask
        self.seen: frozenset[str] = frozenset()  # nodes already checkpointed for

    def new_drain(self, step: int) -> Any:
        """At ``step`` (optimizer steps done): the preemption info when it names a node not
        seen before, else None. Asks only on multiples of ``every_steps`` (never when 0)."""
        if self.every_steps <= 0 or step % self.every_steps:
            return None
        info = self.ask()
        if info is None:
            return None
        nodes = frozenset(info.preempted_node_ids)
        if nodes <= self.seen:
            return None
        self.seen |= nodes
        return info


def deadline_text(deadline_ms: int | None) -> str:
    """``in 42 s`` for a deadline in Unix milliseconds; ``none given`` for None."""
    if deadline_ms is None:
        return "none given"
    return f"in {deadline_ms / 1000 - time.time():.0f} s"
