"""``sslpipe shard``: an ImageFolder directory -> Parquet shards plus ``_manifest.json``.

Rows keep the original encoded bytes; the manifest is written last (see ``manifest.py``).
"""

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data.manifest import (
    SHARD_SCHEMA,
    Manifest,
    ShardFile,
    join,
    resolve,
    write_manifest,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
DEFAULT_TARGET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Row:
    key: str
    image: bytes
    label: int
    width: int
    height: int


def tool_version() -> str:
    try:
        return version("sslpipe")
    except PackageNotFoundError:
        return "unknown"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header; (0, 0) when unreadable (decoding decides later)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return (0, 0)


def scan_imagefolder(src: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, label) pairs in a stable order."""
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"{src}: not a directory (expected SRC/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{src}: no class folders (expected SRC/<class>/<image>)")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise ValueError(f"{src}: no image files under the class folders")
    return classes, files


def imagefolder_rows(src: str | Path) -> tuple[list[str], Iterator[Row]]:
    classes, files = scan_imagefolder(src)
    root = Path(src)

    def rows() -> Iterator[Row]:
        for path, label in files:
            data = path.read_bytes()
            w, h = image_size(data)
            yield Row(path.relative_to(root).as_posix(), data, label, w, h)

    return classes, rows()


def _write_file(fs, root: str, name: str, rows: list[Row]) -> ShardFile:
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
    sink = io.BytesIO()
    # images are already compressed; Parquet compression would only cost time
    pq.write_table(table, sink, compression="none", row_group_size=1024)
    payload = sink.getvalue()
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
    """Write rows into Parquet files of about ``target_bytes`` (and at most ``max_rows`` rows)
    each, then the manifest."""
    fs, root = resolve(dest)
    fs.create_dir(root, recursive=True)
    files: list[ShardFile] = []
    pending: list[Row] = []
    size = 0
    for row in rows:
        pending.append(row)
        size += len(row.image)
        if size >= target_bytes or (max_rows is not None and len(pending) >= max_rows):
            files.append(_write_file(fs, root, f"{prefix}-{len(files):05d}.parquet", pending))
            pending, size = [], 0
    if pending or not files:
        files.append(_write_file(fs, root, f"{prefix}-{len(files):05d}.parquet", pending))
    manifest = Manifest(files=files, class_names=class_names, tool_version=tool_version())
    write_manifest(fs, root, manifest)
    return manifest


def shard_imagefolder(src: str, dest: str, target_bytes: int = DEFAULT_TARGET_BYTES) -> Manifest:
    classes, rows = imagefolder_rows(src)
    return write_shards(rows, dest, classes, target_bytes)
