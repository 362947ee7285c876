"""A local Ray for commands run without ``--address``: started quietly, announced in one line."""

import os
import threading
from collections.abc import MutableMapping

import ray
import ray.data  # configures its loggers when imported: import it before quieting them

from pipelines.tracking import console

# Ray Train's settings for a Ray that runs on this machine alone; a value the user set wins. Read
# by the Train controller, which gets them from this process's environment.
LOCAL_TRAIN_ENV = {
    # Spot preemption comes as a drain of another node; here the only node is the driver's own.
    # Off, the controller starts one process fewer.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # The controller polls the workers this often (2 s by default) and collects at most one
    # report per poll, so a run's end waits two polls: one for the last report, one to see the
    # workers done. Two local workers answer a poll in milliseconds.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def local_train_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set :data:`LOCAL_TRAIN_ENV` in ``environ`` where the user has not; returns what it set."""
    added = {k: v for k, v in LOCAL_TRAIN_ENV.items() if k not in environ}
    environ.update(added)
    return added


def start_local_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` on this machine (a new instance even if a ``ray start`` cluster runs here:
    ``--address`` chooses a cluster explicitly). Workers' output stays in Ray's logs and Ray's
    start-up notices go to the run log, unless ``-v``. No dashboard: its processes cost a short
    run's start about 5 s on a 2-core machine (BENCHMARKS.md); to watch one, ``ray start --head``
    and run with ``--address auto``. Ray Train gets :data:`LOCAL_TRAIN_ENV`."""
    if ray.is_initialized():
        return
    local_train_env()
    console.requiet()  # importing Ray (and Ray Data, above) installed their own log handlers
    with console.captured("ray.init"):
        ray.init(
            address="local",
            num_cpus=num_cpus,
            log_to_driver=console.verbose(),
            configure_logging=console.verbose(),
            include_dashboard=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = console.verbose()
    have = ray.cluster_resources()
    console.phase(
        f"Ray started: local, {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs "
        f"(its processes' logs: {log_dir()})"
    )


def stop_ray_in_thread() -> threading.Thread:
    """``ray.shutdown`` in a started (non-daemon) thread, for a command whose remaining work
    does not use Ray: stopping a local Ray's processes is mostly waiting for them to exit (about
    1.2 s on a 2-core machine), which that work can overlap. Join it before returning."""
    thread = threading.Thread(target=ray.shutdown, name="sslpipe-ray-shutdown")
    thread.start()
    return thread


def log_dir() -> str:
    """Where this machine's Ray session keeps its processes' logs (the workers' output)."""
    try:
        from ray._private.worker import _global_node

        return _global_node.get_logs_dir_path()
    except Exception:  # a private API: say where it usually is
        return "/tmp/ray/session_latest/logs"
