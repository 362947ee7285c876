"""Inputs whose records are whole files or objects: ImageFolder directories, local or on S3.

A local ImageFolder is walked without leaving SRC: a symlink is followed only when its target
lies inside SRC and, for a folder, is not one of the folders holding the link (a loop). Any
other link, and any name that is not UTF-8, becomes a bad record naming it: a link back to SRC
would otherwise list every class again under the class that holds it.
"""

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.records import (
    Record,
    SourcePlan,
    is_image_name,
    name_problem,
    printable,
    size_problem,
)


@dataclass(frozen=True)
class FileListUnit:
    """Records read one whole file each: (key, uri, label) triples; ``bad``: (key, why) of
    records the planner already found unusable, reported without reading anything."""

    files: tuple[tuple[str, str, int], ...]
    bad: tuple[tuple[str, str], ...] = ()

    def records(self, endpoint: str = "", max_bytes: int = 0) -> Iterator[Record]:
        for key, why in self.bad:
            yield Record(key, b"", -1, why)
        filesystems: dict[str, tuple[pafs.FileSystem, str]] = {}
        for key, uri, label in self.files:
            # one filesystem per bucket (or per process for local paths), not per file
            scope = uri.split("/", 3)[2] if uri.startswith("s3://") else ""
            if scope not in filesystems:
                filesystems[scope] = resolve(uri, endpoint)
            fs = filesystems[scope][0]
            path = uri[len("s3://") :] if scope else uri
            yield _read(fs, path, key, uri, label, max_bytes)


def _read(fs: pafs.FileSystem, path: str, key: str, uri: str, label: int, max_bytes: int) -> Record:
    """One file as a record; its size is checked before its bytes are read."""
    try:
        with fs.open_input_file(path) as f:
            too_big = size_problem(f.size(), max_bytes)
            data = b"" if too_big else f.read()
    except (OSError, ValueError) as e:
        return Record(key, b"", label, f"cannot read {uri} ({type(e).__name__}: {e})")
    return Record(key, b"", -1, too_big) if too_big else Record(key, data, label)


def chunk_files(
    files: list[tuple[str, str, int]],
    sizes: list[int] | None,
    target_bytes: int,
    rows_per_unit: int,
    seed: int | None,
    bad: list[tuple[str, str]] | None = None,
) -> list[FileListUnit]:
    """Units of about ``target_bytes`` (when sizes are known) or ``rows_per_unit`` files; the
    ``bad`` records go with the first unit.

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
    if current or not units:
        units.append(FileListUnit(tuple(current)))
    if bad:
        units[0] = FileListUnit(units[0].files, tuple(bad))
    return units


def _link_problem(real: str, root: str, holders: frozenset[str], is_dir: bool) -> str:
    """Why a symlink resolving to ``real`` is not followed; "" when it is."""
    if real != root and not real.startswith(root + os.sep):
        return f"symlink to {printable(real)}, outside SRC"
    if is_dir and real in holders:
        return "symlink loop: it points to a folder that holds it"
    return ""


def _walk(path: str, real: str, key: str, root: str, holders: frozenset[str]) -> Iterator[tuple]:
    """(key, path, size, why) of the image files under the folder ``path`` (whose resolved
    path is ``real``), and of the entries not followed (``why`` set)."""
    with os.scandir(path) as entries:
        found = list(entries)
    for entry in found:
        name = printable(entry.name)
        is_dir = entry.is_dir()  # follows a symlink
        if not is_dir and not is_image_name(name):
            continue
        why = name_problem(entry.name)
        target = os.path.join(real, entry.name)
        if not why and entry.is_symlink():
            target = os.path.realpath(entry.path)
            why = _link_problem(target, root, holders, is_dir)
        if why:
            yield (f"{key}/{name}", "", 0, why)
        elif is_dir:
            yield from _walk(entry.path, target, f"{key}/{name}", root, holders | {target})
        else:
            yield (f"{key}/{name}", entry.path, entry.stat().st_size, "")


def _local_tree(root: str) -> tuple[list[str], list[tuple], list[tuple[str, str]]]:
    """Classes, (key, path, size, label) of the images, and (key, why) of what was skipped."""
    real_root = os.path.realpath(root)
    holders = frozenset({real_root})
    classes, images, skipped = [], [], []
    with os.scandir(root) as entries:
        tops = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    for entry in tops:
        if entry.name.startswith("."):
            continue
        why = name_problem(entry.name)
        real = os.path.join(real_root, entry.name)
        if not why and entry.is_symlink():
            real = os.path.realpath(entry.path)
            why = _link_problem(real, real_root, holders, is_dir=True)
        if why:
            skipped.append((printable(entry.name), why))
            continue
        label, found = len(classes), []
        classes.append(entry.name)
        for key, path, size, why in _walk(
            entry.path, real, entry.name, real_root, holders | {real}
        ):
            if why:
                skipped.append((key, why))
            else:
                found.append((key, path, size, label))
        images += sorted(found)
    return classes, images, sorted(skipped)


def _remote_tree(fs: pafs.FileSystem, root: str, scheme: str) -> tuple[list[str], list[tuple]]:
    """Classes and (key, uri, size, label) of the images, from an object store's listing."""
    top = fs.get_file_info(pafs.FileSelector(root))
    classes = sorted(
        i.base_name
        for i in top
        if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
    )
    images = []
    for label, name in enumerate(classes):
        found = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", recursive=True))
        for i in sorted(found, key=lambda i: i.path):
            if i.type == pafs.FileType.File and is_image_name(i.base_name):
                images.append((i.path[len(root) + 1 :], f"{scheme}{i.path}", i.size or 0, label))
    return classes, images


def plan_imagefolder(
    src: str, endpoint: str, target_bytes: int, rows_per_unit: int, seed: int | None
) -> SourcePlan:
    """``SRC/<class>/**/<image>``: classes are the sorted folder names."""
    fs, root = resolve(src, endpoint)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{src}: not a directory (expected SRC/<class>/<image>)")
    if isinstance(fs, pafs.LocalFileSystem):
        classes, images, skipped = _local_tree(root)
    else:
        scheme = src[: src.index("://") + 3] if "://" in src else ""
        (classes, images), skipped = _remote_tree(fs, root, scheme), []
    if not classes:
        raise ValueError(f"{src}: no class folders (expected SRC/<class>/<image>)")
    if not images:
        raise ValueError(f"{src}: no image files under the class folders")
    files = [(key, uri, label) for key, uri, _, label in images]
    sizes = [size for _, _, size, _ in images]
    units = chunk_files(files, sizes, target_bytes, rows_per_unit, seed, skipped)
    return SourcePlan("imagefolder", classes, units)
