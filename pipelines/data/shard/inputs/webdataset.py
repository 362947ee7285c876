"""WebDataset shards: tars whose consecutive members sharing a key form one sample
(``000123.jpg``, ``000123.cls``), as written by ``webdataset.ShardWriter`` and img2dataset."""

import json
from collections.abc import Iterable, Iterator

import pyarrow.fs as pafs

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.records import Record, SourcePlan, is_image_name
from pipelines.data.shard.inputs.tar import TarUnit, compression_of, is_tar_name


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _label(parts: dict[str, bytes]) -> int:
    try:
        if "cls" in parts:
            return int(parts["cls"].decode().strip())
        if "json" in parts:
            meta = json.loads(parts["json"])
            for field in ("label", "cls", "class"):
                if isinstance(meta, dict) and isinstance(meta.get(field), int):
                    return meta[field]
    except (ValueError, UnicodeDecodeError):
        pass
    return -1


def samples(members: Iterable[tuple[str, bytes]], key_prefix: str = "") -> Iterator[Record]:
    """Group consecutive members by key; one record per sample that holds an image."""
    key, parts, image_ext = None, {}, ""

    def flush() -> Iterator[Record]:
        if key is not None and image_ext:
            yield Record(key_prefix + key, parts[image_ext], _label(parts))

    for name, data in members:
        k, ext = split_name(name)
        if k != key:
            yield from flush()
            key, parts, image_ext = k, {}, ""
        parts[ext] = data
        if not image_ext and is_image_name(f"x.{ext.rsplit('.', 1)[-1]}"):
            image_ext = ext
    yield from flush()


def expand_braces(pattern: str) -> list[str]:
    """``shards-{000..002}.tar`` -> the three names (WebDataset's shard-list notation)."""
    start, end = pattern.find("{"), pattern.find("}")
    if start < 0 or end < start or ".." not in pattern[start:end]:
        return [pattern]
    lo, hi = pattern[start + 1 : end].split("..")
    width = len(lo)
    head, tail = pattern[:start], pattern[end + 1 :]
    return [
        name
        for i in range(int(lo), int(hi) + 1)
        for name in expand_braces(f"{head}{i:0{width}d}{tail}")
    ]


def shard_uris(src: str, endpoint: str) -> list[str]:
    """A directory (or prefix) of tar shards, one shard, or a brace pattern."""
    if "{" in src:
        return expand_braces(src)
    fs, root = resolve(src, endpoint)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [src]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{src}: no such file or directory")
    scheme = src[: src.index("://") + 3] if "://" in src else ""
    found = fs.get_file_info(pafs.FileSelector(root))
    return sorted(
        f"{scheme}{i.path}"
        for i in found
        if i.type == pafs.FileType.File and is_tar_name(i.base_name)
    )


def plan_webdataset(src: str, endpoint: str) -> SourcePlan:
    uris = shard_uris(src, endpoint)
    if not uris:
        raise ValueError(f"{src}: no .tar shards")
    units = [
        TarUnit(
            uri,
            compression=compression_of(uri),
            layout="webdataset",
            key_prefix=f"{uri.rsplit('/', 1)[-1]}/",
        )
        for uri in uris
    ]
    # classes are not named by WebDataset; the writer derives them from the labels it sees
    return SourcePlan("webdataset", [], units)
