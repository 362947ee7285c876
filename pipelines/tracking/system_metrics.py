"""MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network, and
GPU where ``pynvml`` is there) of the driver's machine while a run trains: on one machine that
is where the workers train too. MLflow reads them with ``psutil``, which sslpipe does not
require: without it nothing is logged and nothing is said. Ray ships a copy
(``ray/thirdparty_files``) that is importable once Ray is, so a pretraining run normally has it.
"""

import contextlib
from collections.abc import Iterator

from pipelines.tracking.runs import absolute_uri


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, resumed: bool = False) -> Iterator[bool]:
    """Sample this machine every 10 s (MLflow's default; ``MLFLOW_SYSTEM_METRICS_*`` change
    it) into the run while the block runs; a resumed run continues its steps. Yields whether
    anything is being sampled."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # no psutil
        yield False
        return
    monitor = SystemMetricsMonitor(
        run_id, resume_logging=resumed, tracking_uri=absolute_uri(tracking_uri)
    )
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
