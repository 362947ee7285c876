"""Independent jobs run as Ray tasks (or in this process), with a tqdm progress bar on stderr."""

from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    progress: tqdm | None = None,
    count: Callable[[Any], int] | None = None,
) -> list[Any]:
    """``fn(*job)`` for every job, results in job order. ``workers`` = 0 runs them here, one
    after the other; otherwise as Ray tasks, at most ``2 × workers`` in flight so a huge plan
    never floods the object store. The first failure cancels the rest and is re-raised as the
    job's own exception (not Ray's wrapper), so callers can catch e.g. BadImageError.
    ``progress`` advances by one per finished job, shows the sum of ``count(result)`` as images
    when ``count`` is given, and is closed (its final line printed) after the last job."""
    results: list[Any] = [None] * len(jobs)
    images = 0

    def finished(i: int) -> None:
        nonlocal images
        if progress is None:
            return
        if count is not None:
            images += count(results[i])
            progress.set_postfix_str(f"{images} images", refresh=False)
        progress.update()
        if progress.n >= len(jobs):
            progress.close()

    if workers <= 0:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            finished(i)
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
                finished(i)
    except ray.exceptions.RayTaskError as e:
        for ref in pending:
            ray.cancel(ref)
        cause = e.cause if isinstance(e.cause, Exception) else None
        if cause is not None:
            raise cause from None
        raise
    return results
