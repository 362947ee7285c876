"""Independent jobs run as Ray tasks (or in this process), with a progress line on stderr."""

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO


class ProgressBar:
    """``label [#####.....] 5/10 units, 1234 images, 56/s``: redrawn in place on a terminal,
    printed every 10% otherwise (logs stay short)."""

    def __init__(self, label: str, total: int, unit: str, stream: TextIO | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.items = 0, 0
        self.start = time.perf_counter()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.next_report = 0.0

    def update(self, items: int = 0) -> None:
        self.done += 1
        self.items += items
        fraction = self.done / max(1, self.total)
        if self.tty or fraction >= self.next_report or self.done == self.total:
            self.next_report = fraction + 0.1
            self.draw()

    def draw(self) -> None:
        fraction = self.done / max(1, self.total)
        bar = "#" * round(20 * fraction) + "." * (20 - round(20 * fraction))
        rate = self.items / max(1e-9, time.perf_counter() - self.start)
        line = (
            f"{self.label} [{bar}] {self.done}/{self.total} {self.unit}, "
            f"{self.items} images, {rate:.0f}/s"
        )
        end = "" if self.tty and self.done < self.total else "\n"
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    progress: ProgressBar | None = None,
    count: Callable[[Any], int] = lambda _: 0,
) -> list[Any]:
    """``fn(*job)`` for every job, results in job order. ``workers`` = 0 runs them here, one
    after the other; otherwise as Ray tasks, at most ``2 × workers`` in flight so a huge plan
    never floods the object store. The first failure cancels the rest and is re-raised as the
    job's own exception (not Ray's wrapper), so callers can catch e.g. BadImageError."""
    results: list[Any] = [None] * len(jobs)
    if workers <= 0:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            if progress:
                progress.update(count(results[i]))
        return results

    import ray

    remote = ray.remote(num_cpus=1)(fn)
    pending: dict[Any, int] = {}
    next_job = 0
    try:
        while next_job < len(jobs) or pending:
            while next_job < len(jobs) and len(pending) < 2 * workers:
                pending[remote.remote(*jobs[next_job])] = next_job
                next_job += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                results[i] = ray.get(ref)
                if progress:
                    progress.update(count(results[i]))
    except ray.exceptions.RayTaskError as e:
        for ref in pending:
            ray.cancel(ref)
        cause = e.cause if isinstance(e.cause, Exception) else None
        if cause is not None:
            raise cause from None
        raise
    return results
