"""The shard-set manifest: which Parquet files exist, their rows and checksums, the classes.

A reader trusts only files the manifest names; a writer writes the manifest last, atomically
(temporary name, then rename), so a half-written shard set is never mistaken for a whole one.
Paths are local or ``s3://bucket/prefix``; S3 credentials come from the standard AWS chain and a
custom endpoint (MinIO, moto, any S3-compatible store) from an argument or ``AWS_ENDPOINT_URL``.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

MANIFEST_NAME = "_manifest.json"
FORMAT = "sslpipe-shards"
FORMAT_VERSION = 1
MAX_LISTED_BAD_KEYS = 1000  # the manifest names at most this many skipped records

SHARD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # unique, stable: the record's path inside its source
        ("image", pa.binary()),  # the encoded bytes (original, or re-encoded when shrunk)
        ("label", pa.int32()),  # class index into class_names, -1 when unknown
        ("width", pa.int32()),  # as displayed, i.e. after EXIF orientation
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
    source: str = ""  # what was sharded (path or URI), for lineage
    bad_records: int = 0  # undecodable source records skipped while sharding
    bad_keys: list[str] = field(default_factory=list)  # the first MAX_LISTED_BAD_KEYS of them
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.total_rows = sum(f.rows for f in self.files)
        self.total_bytes = sum(f.bytes for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def s3_endpoint(endpoint: str | None = None) -> str:
    """The S3 endpoint to use: the argument, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
    (the AWS SDKs' standard variables), else "" for AWS itself."""
    return (
        endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or ""
    )


def resolve(path: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for local paths and URIs alike.

    For ``s3://`` with a custom endpoint the filesystem is built explicitly: a bare
    ``S3FileSystem()`` ignores ``AWS_ENDPOINT_URL``, and region discovery fails on most
    S3-compatible stores.
    """
    if path.startswith("s3://"):
        url = s3_endpoint(endpoint)
        inner = path[len("s3://") :].rstrip("/")
        if not inner:
            raise ValueError(f"{path}: an S3 URI needs a bucket (s3://bucket/prefix)")
        if url:
            scheme = "http" if url.startswith("http://") else "https"
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            fs = pafs.S3FileSystem(
                endpoint_override=url, scheme=scheme, region=region or "us-east-1"
            )
            return fs, inner
        return pafs.FileSystem.from_uri(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def write_bytes_atomic(fs: pafs.FileSystem, target: str, payload: bytes) -> None:
    """Write under a temporary name, then move: readers never see a partial object."""
    head, _, tail = target.rpartition("/")
    tmp = f"{head}/.{tail}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(payload)
    fs.move(tmp, target)


def write_manifest(fs: pafs.FileSystem, root: str, manifest: Manifest) -> None:
    """Write ``_manifest.json`` atomically: a temporary object, then a move."""
    write_bytes_atomic(fs, join(root, MANIFEST_NAME), manifest.to_json().encode())


def manifest_exists(fs: pafs.FileSystem, root: str) -> bool:
    return fs.get_file_info(join(root, MANIFEST_NAME)).type == pafs.FileType.File


def read_manifest(path: str, endpoint: str | None = None) -> tuple[Manifest, pafs.FileSystem, str]:
    """Read and validate the manifest of the shard set at ``path``."""
    fs, root = resolve(path, endpoint)
    location = join(root, MANIFEST_NAME)
    try:
        with fs.open_input_stream(location) as f:
            raw = json.loads(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {path}: not a shard set, or its writer did not finish "
            f"(make one with `sslpipe shard SRC {path}`)"
        ) from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{location}: not valid JSON ({e})") from e
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
        source=raw.get("source", ""),
        bad_records=int(raw.get("bad_records", 0)),
        bad_keys=list(raw.get("bad_keys", [])),
    )
    return manifest, fs, root
