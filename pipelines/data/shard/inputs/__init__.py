"""Input formats for ``sslpipe shard``: each plans a source into units of work (see
``records.SourcePlan``) that Ray tasks read independently."""

from pipelines.data.shard.inputs.files import FileListUnit, plan_imagefolder
from pipelines.data.shard.inputs.records import Record, SourcePlan
from pipelines.data.shard.inputs.table import plan_list
from pipelines.data.shard.inputs.tar import (
    TarUnit,
    is_tar_name,
    plan_imagenet_tar,
    plan_tar,
    tar_kind,
)
from pipelines.data.shard.inputs.webdataset import plan_webdataset

FORMATS = ("auto", "imagefolder", "tar", "imagenet-tar", "webdataset", "list")

__all__ = ["FORMATS", "FileListUnit", "Record", "SourcePlan", "TarUnit", "plan_source"]


def detect_format(src: str, endpoint: str) -> str:
    import pyarrow.fs as pafs

    from pipelines.data.manifest import resolve

    lower = src.lower()
    if lower.endswith((".csv", ".parquet")):
        return "list"
    if "{" in src:
        return "webdataset"
    if is_tar_name(lower):
        return tar_kind(src, endpoint)
    fs, root = resolve(src, endpoint)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"{src}: no such directory or file (expected an ImageFolder directory, a .tar, "
            "WebDataset shards, or a .csv/.parquet list)"
        )
    entries = fs.get_file_info(pafs.FileSelector(root))
    has_dirs = any(e.type == pafs.FileType.Directory for e in entries)
    tars = [e for e in entries if e.type == pafs.FileType.File and is_tar_name(e.base_name)]
    return "webdataset" if tars and not has_dirs else "imagefolder"


def plan_source(
    src: str,
    fmt: str = "auto",
    endpoint: str = "",
    target_bytes: int = 256 * 2**20,
    rows_per_unit: int = 2048,
    seed: int | None = 0,
) -> SourcePlan:
    """Plan ``src`` (see FORMATS). ``seed`` shuffles file-per-record sources across shards."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; one of {list(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(src, endpoint)
    if fmt == "imagefolder":
        return plan_imagefolder(src, endpoint, target_bytes, rows_per_unit, seed)
    if fmt == "tar":
        return plan_tar(src, endpoint, target_bytes)
    if fmt == "imagenet-tar":
        return plan_imagenet_tar(src, endpoint)
    if fmt == "webdataset":
        return plan_webdataset(src, endpoint)
    return plan_list(src, endpoint, rows_per_unit, seed)
