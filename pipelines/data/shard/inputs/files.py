"""Inputs whose records are whole files or objects: ImageFolder directories, local or on S3."""

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.records import Record, SourcePlan, is_image_name


@dataclass(frozen=True)
class FileListUnit:
    """Records read one whole file each: (key, uri, label) triples."""

    files: tuple[tuple[str, str, int], ...]

    def records(self, endpoint: str = "") -> Iterator[Record]:
        filesystems: dict[str, tuple[pafs.FileSystem, str]] = {}
        for key, uri, label in self.files:
            # one filesystem per bucket (or per process for local paths), not per file
            scope = uri.split("/", 3)[2] if uri.startswith("s3://") else ""
            if scope not in filesystems:
                filesystems[scope] = resolve(uri, endpoint)
            fs = filesystems[scope][0]
            path = uri[len("s3://") :] if scope else uri
            try:
                with fs.open_input_stream(path) as f:
                    data = f.read()
            except (OSError, ValueError) as e:
                yield Record(key, b"", label, f"cannot read {uri} ({type(e).__name__}: {e})")
                continue
            yield Record(key, data, label)


def chunk_files(
    files: list[tuple[str, str, int]],
    sizes: list[int] | None,
    target_bytes: int,
    rows_per_unit: int,
    seed: int | None,
) -> list[FileListUnit]:
    """Units of about ``target_bytes`` (when sizes are known) or ``rows_per_unit`` files.

    With a seed the files are shuffled first, so each shard mixes classes instead of holding
    one class after another (the reader's buffers are local; they cannot undo a sorted set).
    """
    order = list(range(len(files)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    units, current, size = [], [], 0
    for i in order:
        current.append(files[i])
        size += sizes[i] if sizes else 0
        if (sizes and size >= target_bytes) or (not sizes and len(current) >= rows_per_unit):
            units.append(FileListUnit(tuple(current)))
            current, size = [], 0
    if current:
        units.append(FileListUnit(tuple(current)))
    return units


def plan_imagefolder(
    src: str, endpoint: str, target_bytes: int, rows_per_unit: int, seed: int | None
) -> SourcePlan:
    """``SRC/<class>/**/<image>``: classes are the sorted folder names."""
    fs, root = resolve(src, endpoint)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{src}: not a directory (expected SRC/<class>/<image>)")
    top = fs.get_file_info(pafs.FileSelector(root))
    classes = sorted(
        i.base_name
        for i in top
        if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
    )
    if not classes:
        raise ValueError(f"{src}: no class folders (expected SRC/<class>/<image>)")
    scheme = src[: src.index("://") + 3] if "://" in src else ""
    files, sizes = [], []
    for label, name in enumerate(classes):
        found = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", recursive=True))
        for i in sorted(found, key=lambda i: i.path):
            if i.type == pafs.FileType.File and is_image_name(i.base_name):
                key = i.path[len(root) + 1 :]
                files.append((key, f"{scheme}{i.path}", label))
                sizes.append(i.size or 0)
    if not files:
        raise ValueError(f"{src}: no image files under the class folders")
    return SourcePlan(
        "imagefolder", classes, chunk_files(files, sizes, target_bytes, rows_per_unit, seed)
    )
