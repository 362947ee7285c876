"""CSV or Parquet lists of ``(uri, label)`` rows; uris local, relative to the list, or s3://.

``label`` is optional: integers are used as class indices, strings become classes (sorted),
empty values mean unknown (-1). A row is a bad record (skipped and counted) when it repeats an
earlier uri (the record's key), or when its integer label is negative or over ``MAX_LABEL``:
one typo would otherwise make a million-class name list, or a label int32 cannot hold.
"""

import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.files import chunk_files
from pipelines.data.shard.inputs.records import SourcePlan, label_problem

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
    problems = [""] * len(uris)
    if all(v is None or isinstance(v, int) for v in raw):
        problems = ["" if v is None else label_problem(v) for v in raw]
        labels = [-1 if v is None or p else int(v) for v, p in zip(raw, problems, strict=True)]
        classes = [str(i) for i in range(max(labels, default=-1) + 1)]
    else:
        classes = sorted({str(v) for v in raw if v not in (None, "")})
        index = {c: i for i, c in enumerate(classes)}
        labels = [-1 if v in (None, "") else index[str(v)] for v in raw]
    seen: set[str] = set()
    for i, uri in enumerate(uris):  # the uri is the key: a repeated row is a bad record
        if uri in seen:
            problems[i] = problems[i] or "duplicate key: an earlier row has this uri"
        seen.add(uri)
    base = src.rsplit("/", 1)[0] if "://" in src else posixpath.dirname(resolve(src)[1])
    rows = zip(uris, labels, problems, strict=True)
    files = [(u, _absolute(u, base), lab) for u, lab, why in rows if not why]
    bad = [(u, why) for u, why in zip(uris, problems, strict=True) if why]
    return SourcePlan("list", classes, chunk_files(files, None, 0, rows_per_unit, seed, bad))
