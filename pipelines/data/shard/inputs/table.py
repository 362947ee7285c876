"""CSV or Parquet lists of ``(uri, label)`` rows; uris local, relative to the list, or s3://.

``label`` is optional: integers are used as class indices, strings become classes (sorted),
empty values mean unknown (-1).
"""

import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.files import chunk_files
from pipelines.data.shard.inputs.records import SourcePlan

URI_COLUMNS = ("uri", "path", "url")


def _read_table(src: str, endpoint: str) -> pa.Table:
    fs, path = resolve(src, endpoint)
    with fs.open_input_file(path) as f:
        if src.lower().endswith(".parquet"):
            return pq.read_table(f)
        options = pacsv.ConvertOptions(
            column_types={"uri": pa.string(), "path": pa.string()}, strings_can_be_null=True
        )
        return pacsv.read_csv(f, convert_options=options)


def _absolute(uri: str, base: str) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    return posixpath.normpath(posixpath.join(base, uri)) if "://" not in base else f"{base}/{uri}"


def plan_list(src: str, endpoint: str, rows_per_unit: int, seed: int | None) -> SourcePlan:
    table = _read_table(src, endpoint)
    column = next((c for c in URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise ValueError(
            f"{src}: no uri column (expected one of {list(URI_COLUMNS)}; "
            f"found {table.column_names})"
        )
    uris = table.column(column).to_pylist()
    if any(not u for u in uris):
        row = next(i for i, u in enumerate(uris) if not u)
        raise ValueError(f"{src}: row {row + 1} has an empty {column}")
    raw = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(uris)
    if all(v is None or isinstance(v, int) for v in raw):
        labels = [-1 if v is None else int(v) for v in raw]
        classes = [str(i) for i in range(max(labels, default=-1) + 1)]
    else:
        classes = sorted({str(v) for v in raw if v not in (None, "")})
        index = {c: i for i, c in enumerate(classes)}
        labels = [-1 if v in (None, "") else index[str(v)] for v in raw]
    seen: set[str] = set()
    duplicates = [u for u in uris if u in seen or seen.add(u)]
    if duplicates:
        raise ValueError(f"{src}: uris must be unique; repeated: {duplicates[:5]}")
    base = src.rsplit("/", 1)[0] if "://" in src else posixpath.dirname(resolve(src)[1])
    files = [(u, _absolute(u, base), lab) for u, lab in zip(uris, labels, strict=True)]
    return SourcePlan("list", classes, chunk_files(files, None, 0, rows_per_unit, seed))
