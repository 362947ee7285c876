"""WebDataset shards: tars whose consecutive members sharing a key form one sample
(``000123.jpg``, ``000123.cls``), as written by ``webdataset.ShardWriter`` and img2dataset."""

import json
from collections.abc import Iterable, Iterator

import pyarrow.fs as pafs

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.records import (
    Record,
    SourcePlan,
    is_image_name,
    label_problem,
    name_problem,
    printable,
    size_problem,
)
from pipelines.data.shard.inputs.tar import DUPLICATE, Member, TarUnit, compression_of, is_tar_name


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _label(parts: dict[str, bytes]) -> int | None:
    """The sample's label as its ``.cls`` or ``.json`` gives it; None when it gives none."""
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
    return None


def samples(
    members: Iterable[Member], key_prefix: str = "", max_bytes: int = 0
) -> Iterator[Record]:
    """Group consecutive members by key; one record per sample that holds an image. A sample
    with an unusable member name, a member over ``max_bytes`` (left unread) or an unusable
    label becomes a record with ``error``."""
    key, parts, image_ext, problem = None, {}, "", ""

    def flush() -> Iterator[Record]:
        if key is None or not image_ext:
            return
        label = _label(parts) if not problem else None
        why = problem or (label_problem(label) if label is not None else "")
        if why:
            yield Record(key_prefix + key, b"", -1, why)
        else:
            yield Record(key_prefix + key, parts[image_ext], -1 if label is None else label)

    for member in members:
        k, ext = split_name(printable(member.name))
        if k != key:
            yield from flush()
            key, parts, image_ext, problem = k, {}, "", ""
        if not image_ext and is_image_name(f"x.{ext.rsplit('.', 1)[-1]}"):
            image_ext = ext
        problem = problem or name_problem(member.name) or size_problem(member.size, max_bytes)
        problem = problem or (DUPLICATE if member.duplicate else "")
        if not problem:
            parts[ext] = member.read()
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


def _key_prefixes(uris: list[str]) -> list[str]:
    """Each shard's name, as the prefix of its samples' keys; the path below the shards'
    common folder where names repeat (``{00..01}/shard.tar``), so keys stay unique."""
    paths = [u.split("/") for u in uris]
    keep = 1  # path components kept: the name, and as many folders as tell the shards apart
    while len({tuple(p[-keep:]) for p in paths}) < len(paths):
        keep += 1
    return ["/".join(p[-keep:]) + "/" for p in paths]


def plan_webdataset(src: str, endpoint: str) -> SourcePlan:
    uris = list(dict.fromkeys(shard_uris(src, endpoint)))  # a pattern may name a shard twice
    if not uris:
        raise ValueError(f"{src}: no .tar shards")
    units = [
        TarUnit(uri, compression=compression_of(uri), layout="webdataset", key_prefix=prefix)
        for uri, prefix in zip(uris, _key_prefixes(uris), strict=True)
    ]
    # classes are not named by WebDataset; the writer derives them from the labels it sees
    return SourcePlan("webdataset", [], units)
