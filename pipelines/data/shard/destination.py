"""What ``sslpipe shard SRC DEST`` may do to DEST: write into it only when it is new, empty, or
holds a run of the same SRC; delete in it only files it recorded writing.

Refused before any work, with a ConfigError naming both paths:

- DEST equal to SRC, inside SRC, or containing SRC (symlinks and ``..`` resolved): shards
  inside an ImageFolder become a class of the next run and shift every label;
- a DEST that is not empty and holds no run of SRC (no manifest, no plan of an unfinished run);
- a finished DEST whose manifest names another source, or an unfinished run of another source.

A finished DEST of the same SRC is reported complete; an unfinished one is resumed (``job``).
"""

import contextlib
import json
import os

import pyarrow.fs as pafs

from pipelines.config.typed import ConfigError
from pipelines.data.manifest import (
    Manifest,
    join,
    manifest_exists,
    read_manifest,
    resolve,
    write_bytes_atomic,
)
from pipelines.data.shard.inputs.webdataset import expand_braces
from pipelines.data.shard.writer import PARTS_DIR, STARTED_DIR, is_part_name, marker_name

PLAN_NAME = f"{PARTS_DIR}/plan.json"


def normalized_source(src: str) -> str:
    """How a source is recorded (plan, manifest): local paths absolute, URIs without a trailing
    slash; so ``./src/`` and ``/abs/src`` are one source."""
    return src.rstrip("/") if "://" in src else os.path.abspath(src)


def _location(path: str) -> str:
    """A path for comparisons: local ones resolved (symlinks, ``..``), URIs as written."""
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def _within(inner: str, outer: str) -> bool:
    return inner.startswith(outer.rstrip("/") + "/")


def same_source(a: str, b: str) -> bool:
    return bool(a) and bool(b) and _location(a) == _location(b)


def _check_overlap(src: str, dest: str) -> None:
    where = _location(dest)
    for path in expand_braces(src) if "{" in src else [src]:
        place = _location(path)
        shown = f" (resolved: SRC {place}, DEST {where})" if (place, where) != (src, dest) else ""
        if where == place:
            relation, why = "is", "the shards would be written among the source's own files"
        elif _within(where, place):
            relation = "is inside"
            why = "the shards would be read as part of SRC by the next run (in an ImageFolder, "
            why += "a new class that shifts every label)"
        elif _within(place, where):
            relation, why = "contains", "the source would lie among the shards"
        else:
            continue
        raise ConfigError(
            f"DEST {dest} {relation} SRC {src}{shown}: {why}; choose a DEST that neither is, "
            "lies in, nor holds SRC"
        )


def _read_plan(fs: pafs.FileSystem, root: str) -> dict | None:
    try:
        with fs.open_input_stream(join(root, PLAN_NAME)) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return {}  # a plan cut short: still a run of ours, its fingerprint will not match


def check_destination(src: str, dest: str, endpoint: str = "") -> Manifest | None:
    """Refuse a DEST this run must not write into (see the module docstring); return the
    manifest when DEST already holds the finished shard set of ``src``. Only reads."""
    _check_overlap(src, dest)
    fs, root = resolve(dest, endpoint)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        return None
    if kind != pafs.FileType.Directory:
        raise ConfigError(f"DEST {dest} is a file, not a directory (SRC {src})")
    if manifest_exists(fs, root):
        try:
            manifest, _, _ = read_manifest(dest, endpoint)
        except ValueError:  # a _manifest.json of some other tool: no run of ours
            manifest = None
        if manifest is not None and same_source(manifest.source, src):
            return manifest
        if manifest is not None:
            raise ConfigError(
                f"DEST {dest} already holds a shard set of "
                f"{manifest.source or 'an unrecorded source'}, not of SRC {src}; choose "
                f"another DEST, or delete {dest} yourself to replace it"
            )
    else:
        plan = _read_plan(fs, root)
        if plan is not None:
            earlier = plan.get("source", "")
            if earlier and not same_source(earlier, src):
                raise ConfigError(
                    f"DEST {dest} holds an unfinished shard run of {earlier}, not of SRC "
                    f"{src}; finish it with `sslpipe shard {earlier} {dest}` and the same "
                    "options, or choose another DEST"
                )
            return None  # ours to resume (the plan's fingerprint checks the options)
    entries = fs.get_file_info(pafs.FileSelector(root))
    if entries:
        names = sorted(e.base_name for e in entries)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(
            f"DEST {dest} is not empty (it holds {shown}) and holds no shard run of SRC {src}; "
            "sslpipe shard writes only into a new or empty directory, or resumes its own run "
            "there: choose another DEST"
        )
    return None


def claim(fs: pafs.FileSystem, root: str, src: str, dest: str, digest: str, units: int) -> None:
    """Record the plan of this run in DEST, or check that DEST's unfinished run is this one."""
    earlier = _read_plan(fs, root)
    if earlier is None:
        fs.create_dir(join(root, STARTED_DIR), recursive=True)
        payload = {"source": src, "fingerprint": digest, "units": units}
        write_bytes_atomic(fs, join(root, PLAN_NAME), json.dumps(payload).encode())
        return
    if earlier.get("fingerprint") != digest:
        raise ConfigError(
            f"DEST {dest} holds an unfinished shard run of SRC {src} with different options "
            f"(or a source changed since); re-run with the same ones to finish it, or delete "
            f"{dest} (or choose another DEST)"
        )
    fs.create_dir(join(root, STARTED_DIR), recursive=True)


def remove_leftovers(fs: pafs.FileSystem, root: str, manifest: Manifest, units: int) -> None:
    """Delete the files of interrupted tasks (recorded as started, named by no manifest entry),
    then this run's own records, then ``_parts`` if nothing else is left in it. Nothing is
    deleted by its name's pattern alone: a user's ``part-...`` file stays."""
    listed = {f.name for f in manifest.files}
    started = join(root, STARTED_DIR)
    for info in fs.get_file_info(pafs.FileSelector(started, allow_not_found=True)):
        if info.type != pafs.FileType.File or not is_part_name(info.base_name, units):
            continue
        if info.base_name not in listed:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(join(root, info.base_name))
        fs.delete_file(info.path)
    ours = {PLAN_NAME} | {marker_name(i) for i in range(units)}
    ours |= {f"{PARTS_DIR}/.{name.rpartition('/')[2]}.tmp" for name in ours}  # write_bytes_atomic
    for info in fs.get_file_info(pafs.FileSelector(join(root, PARTS_DIR), allow_not_found=True)):
        if info.type == pafs.FileType.File and f"{PARTS_DIR}/{info.base_name}" in ours:
            fs.delete_file(info.path)
    for folder in (started, join(root, PARTS_DIR)):
        if not fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            with contextlib.suppress(OSError):  # object stores have no directories to delete
                fs.delete_dir(folder)
