"""One run, one name: ``train.name`` names the run's directory under ``train.storage`` (its
checkpoints, where Ray Train resumes from) and its MLflow run.

Ray Train resumes whatever run it finds under a name, so a fresh run given the name of an
existing one would silently continue that run's checkpoint: :func:`refuse_taken_name` stops it
and points at ``--resume``. Default names carry a random suffix, so two runs started in the same
second do not meet.
"""

import os
import secrets
import time

from pipelines.config.typed import ConfigError


def default_run_name(method: str) -> str:
    """``<method>-<YYYYmmdd-HHMMSS>-<6 hex digits>``."""
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _holds_anything(run_dir: str) -> bool:
    if "://" in run_dir:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(run_dir)
        selector = pafs.FileSelector(root, allow_not_found=True, recursive=False)
        return bool(fs.get_file_info(selector))
    return os.path.isdir(run_dir) and any(os.scandir(run_dir))


def refuse_taken_name(storage: str, name: str) -> None:
    """A ConfigError when ``storage/name`` already holds a run (anything at all: checkpoints,
    Ray Train's state, fitted assets)."""
    run_dir = f"{storage.rstrip('/')}/{name}"
    if _holds_anything(run_dir):
        raise ConfigError(
            f"train.name {name!r} is taken: {run_dir} holds an earlier run, which this run "
            f"would silently continue. To continue it, use `sslpipe pretrain --resume {name}` "
            "(its MLflow run id or name); to start afresh, choose another train.name or leave "
            "it empty for a generated one"
        )
