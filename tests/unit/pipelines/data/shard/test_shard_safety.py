"""What `sslpipe shard` may touch and what it refuses, on folders people really have: it deletes
only files it recorded writing, refuses a DEST it does not own or that overlaps SRC before doing
any work, and skips (and counts) odd inputs instead of crashing or shifting labels."""

import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config.typed import ConfigError
from pipelines.data.decode import BadImageError
from pipelines.data.manifest import read_manifest
from pipelines.data.shard.job import shard
from pipelines.data.shard.verify import verify
from pipelines.data.shard.writer import ShardOptions
from tests.images import encode, jpeg, photo, tar_bytes, write_imagefolder


def rows_of(dest) -> dict[str, int]:
    """{key: label} of every row the manifest names."""
    manifest, _, root = read_manifest(str(dest))
    table = pq.read_table([f"{root}/{f.name}" for f in manifest.files])
    return dict(zip(table["key"].to_pylist(), table["label"].to_pylist(), strict=True))


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for directories)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


# --- sharding deletes only what it recorded writing -------------------------------------------


def test_a_resumed_run_leaves_files_it_did_not_write(tmp_path):
    """An interrupted run (a strict stop at the last image), then foreign files in DEST, then the
    run again: it finishes, and every file it did not write is still there, unchanged."""
    src, dest = tmp_path / "src", tmp_path / "out"
    written = write_imagefolder(src, per_class=2)
    (src / "zzz").mkdir()
    (src / "zzz" / "late.jpg").write_bytes(b"not yet an image")
    options = ShardOptions(target_bytes=1, seed=None, bad_images="strict")  # a unit per image
    with pytest.raises(BadImageError, match=r"zzz/late\.jpg"):
        shard(str(src), str(dest), options)
    assert not (dest / "_manifest.json").exists() and (dest / "_parts").is_dir()

    foreign = {
        "part-of-my-thesis.docx": b"three years of work",
        "part-00000-spark.snappy.parquet": b"someone else's table",
        ".part-hidden": b"a hidden note",
        "_parts/my-own-file.txt": b"mine",
    }
    for name, data in foreign.items():
        (dest / name).write_bytes(data)
    (src / "zzz" / "late.jpg").write_bytes(jpeg(20, 16, seed=7))  # the same plan, now decodable
    report = shard(str(src), str(dest), options)
    assert report.resumed == 4 and report.manifest.bad_records == 0
    assert set(rows_of(dest)) == {*written, "zzz/late.jpg"}
    for name, data in foreign.items():
        assert (dest / name).read_bytes() == data, f"{name} was changed or deleted"
    assert sorted(p.name for p in (dest / "_parts").iterdir()) == ["my-own-file.txt"]


# --- refusals, before any work ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "says"), [("same", "is SRC"), ("inside", "inside SRC"), ("around", "contains SRC")]
)
def test_a_dest_that_overlaps_src_is_refused_before_any_work(tmp_path, where, says):
    src = tmp_path / "data" / "src"
    write_imagefolder(src)
    dest = {"same": src, "inside": src / "out", "around": tmp_path / "data"}[where]
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=says) as refused:
        shard(str(src), str(dest))
    assert str(src) in str(refused.value) and str(dest) in str(refused.value)
    assert tree(tmp_path) == before  # not a byte written


def test_a_dest_inside_src_through_a_symlink_or_a_relative_path_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_imagefolder(src)
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ConfigError, match="inside SRC"):
        shard(str(src), str(tmp_path / "link" / "out"))
    monkeypatch.chdir(src)
    with pytest.raises(ConfigError, match="inside SRC"):
        shard(str(src), "out")


def test_a_tar_source_inside_dest_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    images = {"cat/0.jpg": jpeg(20, 16, seed=1), "dog/0.jpg": jpeg(20, 16, seed=2)}
    (tmp_path / "data" / "a.tar").write_bytes(tar_bytes(images))
    with pytest.raises(ConfigError, match="contains SRC"):
        shard(str(tmp_path / "data" / "a.tar"), str(tmp_path / "data"))


@pytest.mark.parametrize("content", ["notes.txt", "_parts/my-own-file.txt", "part-00000.parquet"])
def test_a_non_empty_dest_without_a_run_of_src_is_refused(tmp_path, content):
    src, dest = tmp_path / "src", tmp_path / "out"
    write_imagefolder(src)
    (dest / content).parent.mkdir(parents=True, exist_ok=True)
    (dest / content).write_bytes(b"the user's")
    before = tree(dest)
    with pytest.raises(ConfigError, match="not empty") as refused:
        shard(str(src), str(dest))
    assert str(src) in str(refused.value) and str(dest) in str(refused.value)
    assert tree(dest) == before


def test_a_finished_dest_of_another_source_is_refused_not_reported_complete(tmp_path):
    write_imagefolder(tmp_path / "a")
    write_imagefolder(tmp_path / "b", classes=("x", "y", "z"))
    shard(str(tmp_path / "a"), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="holds a shard set of") as refused:
        shard(str(tmp_path / "b"), str(tmp_path / "out"))
    for path in ("a", "b", "out"):
        assert str(tmp_path / path) in str(refused.value)


def test_the_same_source_spelled_another_way_is_still_the_same_run(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "src")
    first = shard(str(tmp_path / "src"), str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    again = shard("./src/", "out")
    assert again.already_complete and again.manifest.total_rows == first.manifest.total_rows


def test_an_unfinished_run_of_another_source_is_refused_naming_both(tmp_path):
    write_imagefolder(tmp_path / "a")
    write_imagefolder(tmp_path / "b")
    (tmp_path / "b" / "cat" / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(BadImageError):
        shard(str(tmp_path / "b"), str(tmp_path / "out"), ShardOptions(bad_images="strict"))
    with pytest.raises(ConfigError, match="unfinished shard run of") as refused:
        shard(str(tmp_path / "a"), str(tmp_path / "out"), ShardOptions(bad_images="strict"))
    for path in ("a", "b", "out"):
        assert str(tmp_path / path) in str(refused.value)


def test_the_cli_exits_2_naming_both_paths(tmp_path, capsys):
    from pipelines.cli import main

    write_imagefolder(tmp_path / "src")
    dest = tmp_path / "src" / "out"
    assert main(["shard", str(tmp_path / "src"), str(dest), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert str(dest) in err and f"SRC {tmp_path / 'src'}" in err
    assert not dest.exists()


# --- odd inputs are skipped and counted, or stop a strict run ---------------------------------


def non_utf8(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def raw_tar(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A tar keeping names exactly as given (non-UTF-8 bytes included) and in order, a name
    given twice included."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", errors="surrogateescape") as tar:
        for name, data in members.items() if isinstance(members, dict) else members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_odd_tar_member_names_are_skipped_and_counted_and_shift_no_label(tmp_path):
    good = {"cat/0.jpg": jpeg(20, 16, seed=1), "dog/0.jpg": jpeg(20, 16, seed=2)}
    odd = {
        "/abs/x.jpg": jpeg(20, 16, seed=3),  # would make a class "" sorted before cat
        "cat/../dog/1.jpg": jpeg(20, 16, seed=4),
        non_utf8(b"cat/caf\xe9.jpg"): jpeg(20, 16, seed=5),
    }
    (tmp_path / "a.tar").write_bytes(raw_tar({**odd, **good}))
    report = shard(str(tmp_path / "a.tar"), str(tmp_path / "out"))
    m = report.manifest
    assert m.class_names == ["cat", "dog"]
    assert rows_of(tmp_path / "out") == {"cat/0.jpg": 0, "dog/0.jpg": 1}
    assert m.bad_records == 3
    assert sorted(m.bad_keys) == ["/abs/x.jpg", "cat/../dog/1.jpg", "cat/caf\\xe9.jpg"]
    with pytest.raises(BadImageError, match=r"/abs/x\.jpg: .*absolute"):
        shard(str(tmp_path / "a.tar"), str(tmp_path / "strict"), ShardOptions(bad_images="strict"))


def test_non_utf8_names_in_webdataset_and_imagefolder_are_skipped_and_counted(tmp_path):
    (tmp_path / "wds").mkdir()
    members = {
        "000.jpg": jpeg(20, 16, seed=1),
        "000.cls": b"0",
        non_utf8(b"caf\xe9.jpg"): jpeg(20, 16, seed=2),
        non_utf8(b"caf\xe9.cls"): b"1",
    }
    (tmp_path / "wds" / "s-000.tar").write_bytes(raw_tar(members))
    m = shard(str(tmp_path / "wds"), str(tmp_path / "out")).manifest
    assert rows_of(tmp_path / "out") == {"s-000.tar/000": 0}
    assert m.bad_records == 1 and m.bad_keys == ["s-000.tar/caf\\xe9"]

    write_imagefolder(tmp_path / "src", per_class=1)
    (tmp_path / "src" / "cat" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(jpeg(20, 16))
    m = shard(str(tmp_path / "src"), str(tmp_path / "out2")).manifest
    assert rows_of(tmp_path / "out2") == {"cat/0.jpg": 0, "dog/0.jpg": 1}
    assert m.bad_records == 1 and m.bad_keys == ["cat/caf\\xe9.jpg"]


def test_duplicate_keys_keep_the_first_record_and_count_the_others(tmp_path):
    """A tar appended to (the same name twice, in another span), and a WebDataset sample whose
    members are not consecutive: one row per key, the rest counted, and --verify agrees."""
    first, second = jpeg(30, 20, seed=1), jpeg(30, 20, seed=2)
    members = {f"{c}/{i}.jpg": jpeg(30, 20, seed=i) for c in ("cat", "dog") for i in range(6)}
    tar = raw_tar([("cat/x.jpg", first), *members.items(), ("cat/x.jpg", second)])
    (tmp_path / "a.tar").write_bytes(tar)
    report = shard(str(tmp_path / "a.tar"), str(tmp_path / "out"), ShardOptions(target_bytes=1500))
    assert report.units > 2  # the two copies lie in different units
    assert report.manifest.bad_records == 1 and report.manifest.bad_keys == ["cat/x.jpg"]
    manifest, _, root = read_manifest(str(tmp_path / "out"))
    table = pq.read_table([f"{root}/{f.name}" for f in manifest.files]).to_pylist()
    assert sorted(r["key"] for r in table) == sorted(["cat/x.jpg", *members])
    assert next(r["image"] for r in table if r["key"] == "cat/x.jpg") == first
    assert verify(str(tmp_path / "out"), progress=False).ok

    (tmp_path / "wds").mkdir()
    wds_tar = raw_tar(
        [
            *[("000.jpg", first), ("000.cls", b"0"), ("001.jpg", second), ("001.cls", b"1")],
            *[("000.jpg", jpeg(8, 8)), ("000.cls", b"1")],  # sample 000 again, later
        ]
    )
    (tmp_path / "wds" / "s.tar").write_bytes(wds_tar)
    m = shard(str(tmp_path / "wds"), str(tmp_path / "wout")).manifest
    assert rows_of(tmp_path / "wout") == {"s.tar/000": 0, "s.tar/001": 1}
    assert m.bad_records == 1 and m.bad_keys == ["s.tar/000"]
    assert verify(str(tmp_path / "wout"), progress=False).ok


def test_repeated_uris_and_negative_or_absurd_labels_in_a_list_are_skipped_and_counted(tmp_path):
    (tmp_path / "imgs").mkdir()
    lines = ["uri,label"]
    for i, label in enumerate([0, 1, -3, 2**20, 1]):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg(20, 16, seed=i))
        lines.append(f"imgs/{i}.jpg,{label}")
    lines.append("imgs/0.jpg,1")  # the same key again, another label
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    report = shard(str(tmp_path / "list.csv"), str(tmp_path / "out"))
    assert report.manifest.class_names == ["0", "1"]  # not a million names
    assert rows_of(tmp_path / "out") == {"imgs/0.jpg": 0, "imgs/1.jpg": 1, "imgs/4.jpg": 1}
    assert report.manifest.bad_records == 3
    assert sorted(report.manifest.bad_keys) == ["imgs/0.jpg", "imgs/2.jpg", "imgs/3.jpg"]
    assert verify(str(tmp_path / "out"), progress=False).ok
    with pytest.raises(BadImageError, match=r"imgs/2\.jpg: label -3 is negative"):
        shard(str(tmp_path / "list.csv"), str(tmp_path / "s"), ShardOptions(bad_images="strict"))


def test_records_over_the_size_cap_are_skipped_and_counted(tmp_path):
    big = encode(photo(200, 200, seed=1), "PNG")
    assert len(big) > 50_000
    write_imagefolder(tmp_path / "src", per_class=1)
    (tmp_path / "src" / "cat" / "big.png").write_bytes(big)
    (tmp_path / "a.tar").write_bytes(
        tar_bytes({"cat/big.png": big, "cat/0.jpg": jpeg(20, 16), "dog/0.jpg": jpeg(20, 16)})
    )
    options = ShardOptions(max_record_bytes=50_000)
    for src in ("src", "a.tar"):
        m = shard(str(tmp_path / src), str(tmp_path / f"out-{src}"), options).manifest
        assert rows_of(tmp_path / f"out-{src}") == {"cat/0.jpg": 0, "dog/0.jpg": 1}
        assert m.bad_records == 1 and m.bad_keys == ["cat/big.png"]
    with pytest.raises(BadImageError, match=r"cat/big\.png: \d+ bytes is over the cap of 50000"):
        strict = ShardOptions(max_record_bytes=50_000, bad_images="strict")
        shard(str(tmp_path / "a.tar"), str(tmp_path / "strict"), strict)


def sparse_tar(path: Path, huge_name: str, huge_size: int) -> None:
    """Two small images around one member whose header declares ``huge_size`` bytes, stored as a
    hole in a sparse file: cheap on disk, expensive for a reader that loads it."""
    with open(path, "wb") as f:
        for name, data in [("cat/0.jpg", jpeg(20, 16, seed=1)), (huge_name, None)]:
            info = tarfile.TarInfo(name)
            info.size = len(data) if data is not None else huge_size
            f.write(info.tobuf(format=tarfile.GNU_FORMAT))
            if data is None:
                f.seek(-(-huge_size // 512) * 512, io.SEEK_CUR)
            else:
                f.write(data + b"\0" * (-len(data) % 512))
        f.write(tar_bytes({"dog/0.jpg": jpeg(20, 16, seed=2)}))


@pytest.mark.parametrize(
    ("name", "cap_mb"), [("cat/huge.jpg", 64), ("/abs/huge.jpg", 1024)], ids=["size", "name"]
)
def test_tar_members_are_checked_before_they_are_read(tmp_path, name, cap_mb):
    sparse_tar(tmp_path / "a.tar", name, 200 * 2**20)
    options = ShardOptions(max_record_bytes=cap_mb * 2**20)
    tracemalloc.start()
    try:
        m = shard(str(tmp_path / "a.tar"), str(tmp_path / "out"), options).manifest
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m.bad_records == 1 and m.bad_keys == [name]
    assert rows_of(tmp_path / "out") == {"cat/0.jpg": 0, "dog/0.jpg": 1}
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MB: the 200 MB member was read"


def test_images_over_the_pixel_limit_are_bad_even_below_twice_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "small.png").write_bytes(encode(photo(30, 30), "PNG"))  # 900
    (tmp_path / "src" / "a" / "over.png").write_bytes(encode(photo(40, 40), "PNG"))  # 1600
    m = shard(str(tmp_path / "src"), str(tmp_path / "out")).manifest
    assert rows_of(tmp_path / "out") == {"a/small.png": 0}
    assert m.bad_records == 1 and m.bad_keys == ["a/over.png"]


@pytest.mark.parametrize("loop", ["cat/loop", "cat/deeper/up"])
def test_imagefolder_follows_no_symlink_that_leaves_src_or_loops(tmp_path, loop):
    """``cat/loop -> ..`` (SRC itself: every class again, under cat) or ``cat/deeper/up -> ..``
    (cat inside cat); links out of SRC, to a folder, a file, or as a class; one link that
    stays inside SRC without a loop, which is followed."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    write_imagefolder(src, per_class=1)
    (src / "cat" / "1.jpg").write_bytes(jpeg(21, 16, seed=9))
    write_imagefolder(outside, per_class=2, classes=("pool",))
    (src / loop).parent.mkdir(exist_ok=True)
    (src / loop).symlink_to("..")
    (src / "dog" / "pool").symlink_to(outside / "pool")
    (src / "dog" / "far.jpg").symlink_to(outside / "pool" / "0.jpg")
    (src / "pool").symlink_to(outside / "pool")  # a class folder outside SRC
    (src / "cat" / "same.jpg").symlink_to("1.jpg")
    report = shard(str(src), str(tmp_path / "out"))
    assert report.manifest.class_names == ["cat", "dog"]
    assert rows_of(tmp_path / "out") == {
        "cat/0.jpg": 0,
        "cat/1.jpg": 0,
        "cat/same.jpg": 0,
        "dog/0.jpg": 1,
    }
    assert sorted(report.manifest.bad_keys) == sorted([loop, "dog/far.jpg", "dog/pool", "pool"])


def test_imagenet_tar_with_a_class_twice_or_an_odd_inner_name_shifts_no_label(tmp_path):
    inner = {c: {f"{c}_{i}.JPEG": jpeg(20, 16, seed=i) for i in range(2)} for c in ("n01", "n03")}
    outer = {
        "/abs/n02.tar": tar_bytes({"n02_0.JPEG": jpeg(20, 16)}),
        "extra/n01.tar": tar_bytes(inner["n01"]),
        "n01.tar": tar_bytes({"n01_9.JPEG": jpeg(20, 16)}),
        "n03.tar": tar_bytes(inner["n03"]),
    }
    (tmp_path / "train.tar").write_bytes(raw_tar(outer))
    report = shard(str(tmp_path / "train.tar"), str(tmp_path / "out"))
    assert report.manifest.class_names == ["n01", "n03"]
    assert rows_of(tmp_path / "out") == {
        "n01/n01_0.JPEG": 0,
        "n01/n01_1.JPEG": 0,
        "n03/n03_0.JPEG": 1,
        "n03/n03_1.JPEG": 1,
    }
    assert report.manifest.bad_keys == ["/abs/n02.tar", "n01.tar"]  # in name order


def test_webdataset_shards_of_the_same_name_in_two_folders_keep_keys_apart(tmp_path):
    for folder in ("00", "01"):
        (tmp_path / folder).mkdir()
        members = {"000.jpg": jpeg(20, 16, seed=int(folder)), "000.cls": b"0"}
        (tmp_path / folder / "shard.tar").write_bytes(tar_bytes(members))
    shard(str(tmp_path / "{00..01}" / "shard.tar"), str(tmp_path / "out"))
    assert rows_of(tmp_path / "out") == {"00/shard.tar/000": 0, "01/shard.tar/000": 0}
    assert verify(str(tmp_path / "out"), progress=False).ok
