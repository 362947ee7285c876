"""``sslpipe shard SRC DEST``: plan the source, run its units as parallel Ray tasks, resume.

Resuming: the plan (units in a fixed order, see ``inputs``) is fingerprinted into
``DEST/_parts/plan.json`` on the first run. Each finished unit leaves a marker naming its files
(``writer.run_unit``). A re-run with the same source and options skips units with a marker and
redoes the others, overwriting whatever an interrupted task left of their files: no row is
written twice into the manifest and none is missing. The manifest is written last; then files
recorded as started that it does not name are deleted, and the run's own records. What DEST
may hold before a run, and what is refused, is ``destination``'s.
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from pipelines.data.manifest import MAX_LISTED_BAD_KEYS, Manifest, join, resolve, write_manifest
from pipelines.data.shard.destination import (
    check_destination,
    claim,
    normalized_source,
    remove_leftovers,
)
from pipelines.data.shard.inputs import SourcePlan, plan_source
from pipelines.data.shard.tasks import run_parallel
from pipelines.data.shard.writer import (
    PARTS_DIR,
    ShardOptions,
    UnitResult,
    marker_name,
    read_marker,
    run_unit,
    tool_version,
)
from pipelines.tracking.console import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    manifest: Manifest
    units: int  # units in the plan
    resumed: int  # units an earlier run had finished
    already_complete: bool = False  # DEST held a manifest: nothing was done


def fingerprint(src: str, plan: SourcePlan, options: ShardOptions) -> str:
    """What must match for a re-run to continue an earlier one: source, plan and options
    (the endpoint aside: the same bucket may be reached through another URL)."""
    described = {
        "src": src,
        "format": plan.format,
        "classes": plan.class_names,
        "units": [asdict(u) for u in plan.units],
        "options": {k: v for k, v in asdict(options).items() if k != "endpoint"},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _finished_units(fs: pafs.FileSystem, root: str, count: int) -> dict[int, UnitResult]:
    """Markers of earlier runs, found with one listing rather than one request per unit."""
    infos = fs.get_file_info(pafs.FileSelector(join(root, PARTS_DIR), allow_not_found=True))
    present = {info.base_name for info in infos}
    done = {}
    for index in range(count):
        if marker_name(index).rpartition("/")[2] in present:
            marker = read_marker(fs, root, index)
            if marker is not None:
                done[index] = marker
    return done


def shard(
    src: str, dest: str, options: ShardOptions | None = None, workers: int = 0, progress=True
) -> ShardReport:
    """Shard ``src`` into ``dest`` (see the module docstring). ``workers`` > 0 runs that many
    Ray tasks at a time (Ray must be initialised); 0 runs the units in this process."""
    options = options or ShardOptions()
    src = normalized_source(src)
    finished = check_destination(src, dest, options.endpoint)
    if finished is not None:
        return ShardReport(finished, len(finished.files), 0, already_complete=True)
    plan = plan_source(
        src,
        options.format,
        options.endpoint,
        options.target_bytes,
        options.rows_per_unit,
        options.seed,
    )
    fs, root = resolve(dest, options.endpoint)
    fs.create_dir(root, recursive=True)
    claim(fs, root, src, dest, fingerprint(src, plan, options), len(plan.units))
    done = _finished_units(fs, root, len(plan.units))
    todo = [i for i in range(len(plan.units)) if i not in done]
    if done:
        log.info("resuming: %d of %d units already written", len(done), len(plan.units))
    bar = progress_bar("sslpipe shard", len(todo), "units") if progress and todo else None
    jobs = [(plan.units[i], i, dest, options) for i in todo]
    results = run_parallel(run_unit, jobs, workers, bar, count=lambda r: r.rows)
    units = sorted([*done.values(), *results], key=lambda r: r.index)

    max_label = max((u.max_label for u in units), default=-1)
    class_names = plan.class_names or [str(i) for i in range(max_label + 1)]
    bad_keys = [k for u in units for k in u.bad_keys][:MAX_LISTED_BAD_KEYS]
    manifest = Manifest(
        files=[f for u in units for f in u.files],
        class_names=class_names,
        tool_version=tool_version(),
        source=src,
        bad_records=sum(u.bad_count for u in units),
        bad_keys=bad_keys,
    )
    write_manifest(fs, root, manifest)
    remove_leftovers(fs, root, manifest, len(plan.units))
    return ShardReport(manifest, len(plan.units), len(done))
