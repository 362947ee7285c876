"""Tar inputs: a tar of class folders, ImageNet's train tar of per-class tars, WebDataset shards.

A :class:`TarUnit` is a byte range of one tar object read as a stream, so a task never needs
more than its own range: a span of members of a large flat tar, one inner per-class tar inside
ImageNet's 140 GB train tar, or one whole WebDataset shard. Ranges are read with positional
reads, which on S3 become ranged GETs.
"""

import io
import itertools
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from pipelines.data.manifest import resolve
from pipelines.data.shard.inputs.records import (
    Record,
    SourcePlan,
    is_image_name,
    name_problem,
    printable,
    size_problem,
)

_BLOCK = 512
_COMPRESSIONS = {".tar.gz": "gz", ".tgz": "gz", ".tar.bz2": "bz2", ".tar.xz": "xz"}


class _Window(io.RawIOBase):
    """A seekable, read-only view of ``[offset, offset + size)`` of a random-access file."""

    def __init__(self, f: pa.NativeFile, offset: int, size: int) -> None:
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        data = self.f.read_at(n, self.offset + self.pos)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def compression_of(name: str) -> str:
    lower = name.lower()
    return next((c for ext, c in _COMPRESSIONS.items() if lower.endswith(ext)), "")


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(".tar") or bool(compression_of(name))


class Member(NamedTuple):
    """A regular file of a tar, its data not yet read: callers check the name and the size
    (from the header) first, and call ``read`` only for members they keep."""

    name: str  # as stored: may be absolute, hold "..", or not be UTF-8 (surrogate escapes)
    size: int
    read: Callable[[], bytes]  # valid only until the next member is drawn (a stream)
    duplicate: bool  # an earlier member of the archive has the same name


DUPLICATE = "duplicate key: an earlier record has it"


@dataclass(frozen=True)
class TarUnit:
    """A byte range of a tar object and how its members become records.

    ``layout``: ``folders`` (label from the first path component under ``strip``, looked up in
    ``classes``), ``fixed`` (every image gets ``label``), ``webdataset`` (members grouped into
    samples by key; the label from a ``.cls`` or ``.json`` member).
    """

    uri: str
    offset: int = 0
    size: int = -1  # -1: to the end of the object
    compression: str = ""  # gz | bz2 | xz: then the whole object, streamed
    layout: str = "folders"
    key_prefix: str = ""
    label: int = -1
    classes: tuple[str, ...] = ()
    strip: str = ""
    duplicates: tuple[int, ...] = ()  # header offsets of members whose name came earlier
    error: str = ""  # the planner found the whole unit unusable: one bad record, keyed key_prefix

    def members(self, endpoint: str = "") -> Iterator[Member]:
        """The regular files in the range, in tar order (see :class:`Member`)."""
        fs, path = resolve(self.uri, endpoint)
        skip = set(self.duplicates)
        with fs.open_input_file(path) as f:
            size = f.size() - self.offset if self.size < 0 else self.size
            stream = io.BufferedReader(_Window(f, self.offset, size), buffer_size=8 * 2**20)
            mode = f"r|{self.compression}" if self.compression else "r|"
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for member in tar:
                    if member.isfile():

                        def read(member: tarfile.TarInfo = member) -> bytes:
                            data = tar.extractfile(member)
                            return data.read() if data else b""

                        duplicate = self.offset + member.offset in skip
                        yield Member(member.name, member.size, read, duplicate)

    def records(self, endpoint: str = "", max_bytes: int = 0) -> Iterator[Record]:
        """One record per image member (per sample for WebDataset); a member whose name, size
        (over ``max_bytes``) or key is unusable becomes a record with ``error``, unread."""
        if self.error:
            yield Record(self.key_prefix.rstrip("/"), b"", -1, self.error)
            return
        if self.layout == "webdataset":
            from pipelines.data.shard.inputs.webdataset import samples

            yield from samples(self.members(endpoint), self.key_prefix, max_bytes)
            return
        index = {name: i for i, name in enumerate(self.classes)}
        for member in self.members(endpoint):
            name = printable(member.name)
            if not is_image_name(name):
                continue
            problem = name_problem(member.name)
            label = self.label
            if not problem and self.layout == "folders":
                first, sep, _ = member.name.removeprefix(self.strip).partition("/")
                if not member.name.startswith(self.strip) or not sep or first not in index:
                    continue  # a file beside the class folders, not an image of a class
                label = index[first]
            problem = problem or size_problem(member.size, max_bytes)
            problem = problem or (DUPLICATE if member.duplicate else "")
            if problem:
                yield Record(self.key_prefix + name, b"", -1, problem)
            else:
                yield Record(self.key_prefix + name, member.read(), label)


def _open_for_scan(uri: str, endpoint: str):
    """Open a tar for a header scan: small reads, since members are skipped by seeking."""
    fs, path = resolve(uri, endpoint)
    f = fs.open_input_file(path)
    compression = compression_of(uri)
    stream = io.BufferedReader(_Window(f, 0, f.size()), buffer_size=64 * 2**10)
    mode = f"r|{compression}" if compression else "r:"
    return f, tarfile.open(fileobj=stream, mode=mode), compression


def _padded_end(member: tarfile.TarInfo) -> int:
    return member.offset_data + -(-member.size // _BLOCK) * _BLOCK


def _duplicate_offsets(members: list[tarfile.TarInfo]) -> set[int]:
    """Header offsets of members whose name an earlier member has: the first one is the
    record, the others are counted as bad wherever they fall (possibly in another unit)."""
    seen: set[str] = set()
    return {m.offset for m in members if m.name in seen or seen.add(m.name)}


def plan_tar(uri: str, endpoint: str, target_bytes: int) -> SourcePlan:
    """A tar whose members are ``<class>/.../<image>``, optionally all under one top folder.
    An uncompressed tar is cut into spans of about ``target_bytes``, read in parallel.
    Members with unusable names take no part in finding the classes (see ``name_problem``)."""
    f, tar, compression = _open_for_scan(uri, endpoint)
    with f, tar:
        members = [m for m in tar if m.isfile()]
    images = [m for m in members if is_image_name(m.name) and not name_problem(m.name)]
    if not images:
        raise ValueError(f"{uri}: no image files in the archive")
    tops = {m.name.split("/", 1)[0] for m in images}
    strip = f"{next(iter(tops))}/" if len(tops) == 1 and "/" in images[0].name else ""
    rest = [m.name[len(strip) :] for m in images]
    classes = sorted({r.split("/", 1)[0] for r in rest if "/" in r})
    if not classes:
        raise ValueError(f"{uri}: no class folders in the archive (expected <class>/<image>)")
    duplicates = _duplicate_offsets([m for m in members if is_image_name(m.name)])
    common = {"layout": "folders", "classes": tuple(classes), "strip": strip}
    if compression:  # a compressed stream cannot be entered in the middle
        unit = TarUnit(uri, compression=compression, duplicates=tuple(sorted(duplicates)), **common)
        return SourcePlan("tar", classes, [unit])
    units, start, size = [], None, 0
    for i, m in enumerate(members):
        start = m.offset if start is None else start
        size += m.size
        if size >= target_bytes or i == len(members) - 1:
            end = members[i + 1].offset if i + 1 < len(members) else _padded_end(m)
            inside = tuple(sorted(o for o in duplicates if start <= o < end))
            units.append(TarUnit(uri, offset=start, size=end - start, duplicates=inside, **common))
            start, size = None, 0
    return SourcePlan("tar", classes, units)


def plan_imagenet_tar(uri: str, endpoint: str) -> SourcePlan:
    """ImageNet's ``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` per class inside. Each inner
    tar becomes one unit; classes are the sorted wnids. An inner tar with an unusable name, or
    a second one of the same wnid, becomes one bad record."""
    f, tar, compression = _open_for_scan(uri, endpoint)
    if compression:
        raise ValueError(f"{uri}: a tar of per-class tars must be uncompressed")
    with f, tar:
        inner = [m for m in tar if m.isfile() and m.name.lower().endswith(".tar")]
    if not inner:
        raise ValueError(f"{uri}: no per-class .tar members")

    def stem(m: tarfile.TarInfo) -> str:
        return m.name.rsplit("/", 1)[-1][: -len(".tar")]

    usable = [m for m in inner if not name_problem(m.name) and stem(m)]
    stems = sorted({stem(m) for m in usable})
    label = {s: i for i, s in enumerate(stems)}
    units, taken = [], set()
    for m in sorted(inner, key=lambda m: printable(m.name)):
        problem = name_problem(m.name) or ("" if stem(m) else "no class name")
        if not problem and stem(m) in taken:
            problem = f"a second tar of class {stem(m)}"
        if problem:
            units.append(TarUnit(uri, key_prefix=printable(m.name), error=problem))
            continue
        taken.add(stem(m))
        units.append(
            TarUnit(
                uri,
                offset=m.offset_data,
                size=m.size,
                layout="fixed",
                label=label[stem(m)],
                key_prefix=f"{stem(m)}/",
            )
        )
    return SourcePlan("imagenet-tar", stems, units)


def tar_kind(uri: str, endpoint: str) -> str:
    """Guess a tar's layout from its first members: imagenet-tar, webdataset or tar."""
    f, tar, _ = _open_for_scan(uri, endpoint)
    names = []
    with f, tar:
        for m in tar:
            if m.isfile():
                names.append(m.name)
            if len(names) >= 64:
                break
    if names and all(n.lower().endswith(".tar") for n in names):
        return "imagenet-tar"
    # WebDataset: consecutive members sharing a key (000123.jpg, 000123.cls) make one sample;
    # the key keeps its folder, or cat/0.jpg then dog/0.jpg would look like one sample
    keys = [n.rsplit("/", 1)[0] + "/" + n.rsplit("/", 1)[-1].split(".", 1)[0] for n in names]
    grouped = any(a == b for a, b in itertools.pairwise(keys))
    return "webdataset" if grouped else "tar"
