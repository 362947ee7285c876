"""Fault injection for recovery tests: kill one worker process at a chosen step, once per run.

``train.fail_at_step = k`` and ``train.fail_rank = r`` make the worker of rank ``r`` SIGKILL
itself when it is about to take optimizer step ``k`` (0-based: ``k`` steps are done). It is a
real process death (no exception, no cleanup), the failure Ray Train recovers from with
``FailureConfig``. A marker written to the run's storage directory first (local or ``s3://``)
makes it fire once per run, not again after every restart.
"""

import logging
import os
import signal

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


class FaultInjector:
    def __init__(self, at_step: int, target_rank: int, rank: int, run_dir: str) -> None:
        self.armed = at_step >= 0 and rank == target_rank and bool(run_dir)
        self.at_step = at_step
        self.marker = f"{run_dir.rstrip('/')}/.sslpipe/fault-injected-step-{at_step}"
        if self.armed and self._marker_exists():
            self.armed = False  # fired in an earlier attempt of this run

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(self.marker)

    def _marker_exists(self) -> bool:
        fs, path = self._fs()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def maybe_fire(self, step: int) -> None:
        if not self.armed or step != self.at_step:
            return
        fs, path = self._fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"killed by train.fail_at_step\n")
        log.warning("fault injection: killing this worker (pid %d) at step %d", os.getpid(), step)
        os.kill(os.getpid(), signal.SIGKILL)
