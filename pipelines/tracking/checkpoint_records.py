"""A run's checkpoints as MLflow tags, ``sslpipe.checkpoint.<step>`` -> JSON
``{uri, step, epoch}``, which ``sslpipe register RUN --step N`` reads.

Ray Train keeps the latest ``train.keep_checkpoints`` checkpoints (by report order) and deletes
older ones as it registers a new one. Rank 0 mirrors that in the tags: when a checkpoint pushes
one out of the latest K, that one's tag is rewritten with ``"pruned": true``, so the run lists
what storage still holds. A resumed worker reads the checkpoints already in storage from its
listing, so those left over from before the restart are pruned in turn.
"""

import json
import logging
import os
import re
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "sslpipe.checkpoint."  # + zero-padded step -> JSON {uri, step, epoch[, pruned]}
_DIR_NAME = re.compile(r"checkpoint_(\d{9})")


def checkpoint_tags(uri: str, step: int, epoch: int | None, pruned: bool = False) -> dict[str, str]:
    """The run's record of one checkpoint (see :func:`checkpoints_of`); ``pruned``: deleted
    since (the epoch is left out where it is unknown)."""
    record: dict[str, Any] = {"uri": uri, "step": step}
    if epoch is not None:
        record["epoch"] = epoch
    if pruned:
        record["pruned"] = True
    return {f"{CHECKPOINT_TAG}{step:09d}": json.dumps(record)}


def checkpoints_of(run) -> list[dict[str, Any]]:
    """Every checkpoint recorded in an MLflow run, by step; pruned ones carry ``pruned``."""
    records = [json.loads(v) for k, v in run.data.tags.items() if k.startswith(CHECKPOINT_TAG)]
    return sorted(records, key=lambda r: r["step"])


def stored_checkpoints(run_dir: str) -> dict[int, str]:
    """``step -> uri`` of the checkpoint directories under ``run_dir`` (local or a storage URI);
    empty when it does not exist."""
    if "://" in run_dir:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(run_dir)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    elif os.path.isdir(run_dir):
        names = [e.name for e in os.scandir(run_dir) if e.is_dir()]
    else:
        names = []
    found = {}
    for name in names:
        match = _DIR_NAME.fullmatch(name)
        if match:
            found[int(match[1])] = f"{run_dir.rstrip('/')}/{name}"
    return found


class CheckpointRecords:
    """Rank 0's view of the checkpoints Ray Train keeps under ``run_dir``: :meth:`add` returns
    the tags that record a new checkpoint and mark the ones it pushes out of the latest ``keep``
    as pruned. Built when the worker starts, before it reports anything, so the listing of a
    resumed run's storage is not raced by Ray deleting what the next report pushes out."""

    def __init__(self, run_dir: str, keep: int) -> None:
        self.keep = keep
        try:
            stored = stored_checkpoints(run_dir) if run_dir else {}
        except OSError as e:  # storage briefly unreachable: the tags are a record, not the data
            log.warning("could not list %s (%s); older checkpoints stay listed", run_dir, e)
            stored = {}
        self.kept: dict[int, dict[str, Any]] = {
            s: {"uri": u, "epoch": None} for s, u in stored.items()
        }

    def add(self, uri: str, step: int, epoch: int) -> dict[str, str]:
        self.kept[step] = {"uri": uri, "epoch": epoch}
        tags = checkpoint_tags(uri, step, epoch)
        if self.keep > 0:
            for old in sorted(self.kept)[: -self.keep]:
                record = self.kept.pop(old)
                tags.update(checkpoint_tags(record["uri"], old, record["epoch"], pruned=True))
        return tags


def mark_pruned(run_id: str, tracking_uri: str) -> list[int]:
    """At a run's end, on the driver: mark every recorded checkpoint no longer in storage as
    pruned (a worker killed before its tags left loses its marks); return their steps."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    listed = [r for r in checkpoints_of(client.get_run(run_id)) if not r.get("pruned")]
    stored: dict[str, dict[int, str]] = {}
    gone = []
    for record in listed:
        run_dir = record["uri"].rstrip("/").rsplit("/", 1)[0]
        if run_dir not in stored:
            stored[run_dir] = stored_checkpoints(run_dir)
        if record["step"] not in stored[run_dir]:
            tags = checkpoint_tags(record["uri"], record["step"], record.get("epoch"), True)
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            gone.append(record["step"])
    return gone
