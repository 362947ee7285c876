"""``sslpipe shard --verify DEST``: re-check every manifest-listed file against the manifest."""

import hashlib
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.data.manifest import SHARD_SCHEMA, ShardFile, join, read_manifest, resolve
from pipelines.data.shard.tasks import run_parallel
from pipelines.tracking.console import progress_bar

_CHUNK = 8 * 2**20


@dataclass
class FileCheck:
    name: str
    problems: list[str]
    keys: list[str]


@dataclass
class VerifyReport:
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # harmless: e.g. files readers ignore

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(dest: str, endpoint: str, expected: ShardFile) -> FileCheck:
    """Size, sha256, Parquet row count and schema of one file; its keys for the global check."""
    fs, root = resolve(dest, endpoint)
    path = join(root, expected.name)
    problems: list[str] = []
    digest, size = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return FileCheck(expected.name, [f"{expected.name}: missing"], [])
    if size != expected.bytes:
        problems.append(f"{expected.name}: {size} bytes, manifest says {expected.bytes}")
    if digest.hexdigest() != expected.sha256:
        problems.append(f"{expected.name}: sha256 differs from the manifest")
        return FileCheck(expected.name, problems, [])
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        rows = parquet.metadata.num_rows
        schema = parquet.schema_arrow
        keys = parquet.read(columns=["key"]).column("key").to_pylist()
    if rows != expected.rows:
        problems.append(f"{expected.name}: {rows} rows, manifest says {expected.rows}")
    if not schema.equals(SHARD_SCHEMA):
        problems.append(f"{expected.name}: schema {schema} is not the shard schema")
    return FileCheck(expected.name, problems, keys)


def verify(dest: str, endpoint: str = "", workers: int = 0, progress: bool = True) -> VerifyReport:
    """Check every file the manifest names, in parallel Ray tasks when ``workers`` > 0; also
    totals, duplicate keys across files, and files present but not listed (reported only)."""
    manifest, fs, root = read_manifest(dest, endpoint)
    bar = progress_bar("sslpipe verify", len(manifest.files), "files") if progress else None
    jobs = [(dest, endpoint, f) for f in manifest.files]
    checks = run_parallel(check_file, jobs, workers, bar)
    report = VerifyReport(files=len(manifest.files))
    seen: set[str] = set()
    for check, expected in zip(checks, manifest.files, strict=True):
        report.problems += check.problems
        report.rows += expected.rows if not check.problems else len(check.keys)
        duplicates = [k for k in check.keys if k in seen or seen.add(k)]
        if duplicates:
            report.problems.append(f"{check.name}: duplicate keys, e.g. {duplicates[:3]}")
    if sum(f.rows for f in manifest.files) != manifest.total_rows:
        report.problems.append("manifest: total_rows is not the sum of its files' rows")
    listed = {f.name for f in manifest.files}
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.base_name.endswith(".parquet") and info.base_name not in listed:
            report.notes.append(f"{info.base_name}: present but not in the manifest (ignored)")
    return report
