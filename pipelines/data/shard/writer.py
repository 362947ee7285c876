"""Shard writing: records -> validated (optionally re-encoded) rows -> Parquet files.

``run_unit`` is what one shard task does with one unit of a source plan (see ``inputs``): it
writes ``part-<unit>-<k>.parquet`` files of about ``target_bytes`` each, then a small marker
``_parts/unit-<unit>.json`` naming them. The marker is written last, so a unit either counts
as done with all its files, or is redone from scratch by the next run (``job.py``). Before each
file it records the name as started (``_parts/started/<name>``): the only way a file of an
interrupted task, which no marker names, is known to be this run's to delete.
"""

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.data.decode import BadImageError, check_image, reencode
from pipelines.data.manifest import (
    MAX_LISTED_BAD_KEYS,
    SHARD_SCHEMA,
    Manifest,
    ShardFile,
    join,
    resolve,
    write_bytes_atomic,
    write_manifest,
)
from pipelines.data.shard.inputs import Record

log = logging.getLogger(__name__)

DEFAULT_TARGET_BYTES = 256 * 2**20
ROW_GROUP_BYTES = 16 * 2**20  # what a reader holds per row group: bounded memory per task
DEFAULT_MAX_RECORD_BYTES = 64 * 2**20
PARTS_DIR = "_parts"
STARTED_DIR = f"{PARTS_DIR}/started"
_PART = re.compile(r"part-(\d{6,})-(\d{3,})\.parquet")


@dataclass(frozen=True)
class Row:
    key: str
    image: bytes
    label: int
    width: int
    height: int


@dataclass(frozen=True)
class ShardOptions:
    target_bytes: int = DEFAULT_TARGET_BYTES  # Parquet file size to aim for
    max_side: int = 0  # re-encode images whose longer side exceeds this; 0 keeps the bytes
    quality: int = 90  # JPEG quality of re-encoded images
    bad_images: Literal["skip", "strict"] = "skip"  # skip and count, or stop at the first
    format: str = "auto"  # input format (inputs.FORMATS)
    seed: int | None = 0  # shuffles file-per-record sources across shards; None keeps order
    rows_per_unit: int = 2048  # list inputs: records per task (their sizes are unknown)
    # a larger record is bad, left unread: one huge file must not exhaust a task's memory
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    endpoint: str = ""  # S3-compatible endpoint; empty: AWS_ENDPOINT_URL or AWS


@dataclass
class UnitResult:
    index: int
    files: list[ShardFile]
    rows: int
    bad_count: int
    bad_keys: list[str] = field(default_factory=list)
    max_label: int = -1


def tool_version() -> str:
    try:
        return version("sslpipe")
    except PackageNotFoundError:
        return "unknown"


def encode_record(record: Record, options: ShardOptions) -> Row:
    """Validate (decode at reduced size) and, with ``max_side``, shrink; BadImageError if the
    record is not a usable image."""
    if record.error:
        raise BadImageError(record.error)
    if options.max_side > 0:
        data, width, height = reencode(record.data, options.max_side, options.quality)
    else:
        data = record.data
        width, height = check_image(data)
    return Row(record.key, data, record.label, width, height)


def encode_file(rows: list[Row]) -> bytes:
    table = pa.Table.from_pydict(
        {
            "key": [r.key for r in rows],
            "image": [r.image for r in rows],
            "label": [r.label for r in rows],
            "width": [r.width for r in rows],
            "height": [r.height for r in rows],
        },
        schema=SHARD_SCHEMA,
    )
    mean_bytes = sum(len(r.image) for r in rows) / max(1, len(rows))
    group = int(min(1024, max(16, ROW_GROUP_BYTES // max(1.0, mean_bytes))))
    sink = io.BytesIO()
    # images are already compressed; Parquet compression would only cost time
    pq.write_table(table, sink, compression="none", row_group_size=group)
    return sink.getvalue()


def write_file(fs: pafs.FileSystem, root: str, name: str, rows: list[Row]) -> ShardFile:
    payload = encode_file(rows)
    with fs.open_output_stream(join(root, name)) as f:
        f.write(payload)
    return ShardFile(name, len(rows), len(payload), hashlib.sha256(payload).hexdigest())


def write_shards(
    rows: Iterable[Row],
    dest: str,
    class_names: list[str],
    target_bytes: int = DEFAULT_TARGET_BYTES,
    prefix: str = "shard",
    max_rows: int | None = None,
) -> Manifest:
    """Write already-valid rows, in this process, into Parquet files of about
    ``target_bytes`` (and at most ``max_rows`` rows) each, then the manifest."""
    fs, root = resolve(dest)
    fs.create_dir(root, recursive=True)
    files: list[ShardFile] = []
    pending: list[Row] = []
    size = 0
    for row in rows:
        pending.append(row)
        size += len(row.image)
        if size >= target_bytes or (max_rows is not None and len(pending) >= max_rows):
            files.append(write_file(fs, root, f"{prefix}-{len(files):05d}.parquet", pending))
            pending, size = [], 0
    if pending or not files:
        files.append(write_file(fs, root, f"{prefix}-{len(files):05d}.parquet", pending))
    manifest = Manifest(files=files, class_names=class_names, tool_version=tool_version())
    write_manifest(fs, root, manifest)
    return manifest


def marker_name(index: int) -> str:
    return f"{PARTS_DIR}/unit-{index:06d}.json"


def part_name(index: int, k: int) -> str:
    """The ``k``-th Parquet file of unit ``index``."""
    return f"part-{index:06d}-{k:03d}.parquet"


def is_part_name(name: str, units: int) -> bool:
    """Whether ``name`` is exactly a name :func:`part_name` gives a unit of a plan of ``units``."""
    match = _PART.fullmatch(name)
    return bool(match) and int(match[1]) < units and part_name(*map(int, match.groups())) == name


def run_unit(unit, index: int, dest: str, options: ShardOptions) -> UnitResult:
    """One shard task: read the unit's records, write its files, then its marker. A record
    whose key an earlier record of the unit had is bad (the planners make keys unique across
    units)."""
    fs, root = resolve(dest, options.endpoint)
    result = UnitResult(index, [], 0, 0)
    pending: list[Row] = []
    size = 0
    seen: set[str] = set()

    def flush() -> None:
        nonlocal pending, size
        name = part_name(index, len(result.files))
        with fs.open_output_stream(join(root, f"{STARTED_DIR}/{name}")):
            pass  # recorded before the file exists: a crash in between leaves nothing unknown
        result.files.append(write_file(fs, root, name, pending))
        result.rows += len(pending)
        pending, size = [], 0

    for record in unit.records(options.endpoint, options.max_record_bytes):
        try:
            if not record.error:  # a record found bad before reading claims no key
                if record.key in seen:
                    raise BadImageError("duplicate key: an earlier record has it")
                seen.add(record.key)
            row = encode_record(record, options)
        except BadImageError as e:
            if options.bad_images == "strict":
                raise BadImageError(
                    f"bad record {record.key}: {e} (policy 'strict'; "
                    "--bad-images skip skips and counts such records)"
                ) from e
            log.warning("skipping bad record %s: %s", record.key, e)
            result.bad_count += 1
            if len(result.bad_keys) < MAX_LISTED_BAD_KEYS:
                result.bad_keys.append(record.key)
            continue
        pending.append(row)
        size += len(row.image)
        result.max_label = max(result.max_label, row.label)
        if size >= options.target_bytes:
            flush()
    if pending:
        flush()
    write_bytes_atomic(fs, join(root, marker_name(index)), json.dumps(asdict(result)).encode())
    return result


def read_marker(fs: pafs.FileSystem, root: str, index: int) -> UnitResult | None:
    try:
        with fs.open_input_stream(join(root, marker_name(index))) as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        return None
    raw["files"] = [ShardFile(**f) for f in raw["files"]]
    return UnitResult(**raw)
