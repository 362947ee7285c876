"""The shard-set manifest: which Parquet files exist, their rows and checksums, the classes.

A reader trusts only files the manifest names; a writer writes the manifest last, atomically
(temporary name, then rename), so a half-written shard set is never mistaken for a whole one.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

MANIFEST_NAME = "_manifest.json"
FORMAT = "sslpipe-shards"
FORMAT_VERSION = 1

SHARD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # unique, stable: the source path relative to its root
        ("image", pa.binary()),  # the encoded bytes (original, or re-encoded when shrunk)
        ("label", pa.int32()),  # class index into class_names, -1 when unknown
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)


@dataclass
class ShardFile:
    name: str  # relative to the shard directory
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    files: list[ShardFile]
    class_names: list[str]
    total_rows: int = 0
    total_bytes: int = 0
    tool_version: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.total_rows = sum(f.rows for f in self.files)
        self.total_bytes = sum(f.bytes for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for local paths and s3:// URIs alike."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def write_manifest(fs: pafs.FileSystem, root: str, manifest: Manifest) -> None:
    """Write ``_manifest.json`` atomically: a temporary object, then a move."""
    tmp = join(root, f".{MANIFEST_NAME}.tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(manifest.to_json().encode())
    fs.move(tmp, join(root, MANIFEST_NAME))


def read_manifest(path: str) -> tuple[Manifest, pafs.FileSystem, str]:
    """Read and validate the manifest of the shard set at ``path``."""
    fs, root = resolve(path)
    location = join(root, MANIFEST_NAME)
    try:
        with fs.open_input_stream(location) as f:
            raw = json.loads(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {path}: not a shard set, or its writer did not finish "
            f"(make one with `sslpipe shard SRC {path}`)"
        ) from e
    if raw.get("format") != FORMAT:
        raise ValueError(f"{location}: not an sslpipe manifest (format={raw.get('format')!r})")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{location}: format version {raw['format_version']} is newer than this sslpipe "
            f"reads ({FORMAT_VERSION}); upgrade sslpipe"
        )
    files = [ShardFile(**f) for f in raw["files"]]
    manifest = Manifest(
        files=files,
        class_names=list(raw.get("class_names", [])),
        tool_version=raw.get("tool_version", ""),
        created=raw.get("created", ""),
    )
    return manifest, fs, root
