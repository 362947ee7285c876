import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config.typed import ConfigError
from pipelines.data.decode import BadImageError
from pipelines.data.manifest import MANIFEST_NAME, read_manifest
from pipelines.data.shard.job import shard
from pipelines.data.shard.tasks import run_parallel
from pipelines.data.shard.writer import ShardOptions, write_shards
from pipelines.tracking.console import progress_bar
from tests.images import bad_records, encode, photo, write_imagefolder


def rows_of(dest) -> list[dict]:
    manifest, _, root = read_manifest(str(dest))
    return pq.read_table([f"{root}/{f.name}" for f in manifest.files]).to_pylist()


def test_imagefolder_to_shards_and_manifest(tmp_path):
    written = write_imagefolder(tmp_path / "src")
    (tmp_path / "src" / "cat" / "notes.txt").write_text("not an image, not a record")
    report = shard(str(tmp_path / "src"), str(tmp_path / "out"), ShardOptions(target_bytes=500))
    manifest = report.manifest
    assert manifest.class_names == ["cat", "dog"] and manifest.total_rows == 6
    assert len(manifest.files) > 1  # the tiny target forces several files
    read, _, _ = read_manifest(str(tmp_path / "out"))
    assert [f.name for f in read.files] == [f.name for f in manifest.files]
    rows = rows_of(tmp_path / "out")
    by_key = {r["key"]: r for r in rows}
    assert sorted(by_key) == sorted(written)
    assert by_key["dog/2.jpg"]["label"] == 1 and by_key["dog/2.jpg"]["width"] == 22
    assert by_key["cat/1.jpg"]["image"] == written["cat/1.jpg"]  # original bytes, unchanged


def test_shards_mix_classes_when_seeded_and_keep_order_without_a_seed(tmp_path):
    write_imagefolder(tmp_path / "src", per_class=8, classes=("a", "b", "c"))

    def first_file_labels(dest: str, seed: int | None) -> set[int]:
        options = ShardOptions(target_bytes=4000, seed=seed)  # several files of a few images
        report = shard(str(tmp_path / "src"), str(tmp_path / dest), options)
        assert len(report.manifest.files) > 2
        first = pq.read_table(tmp_path / dest / report.manifest.files[0].name)
        return set(first.column("label").to_pylist())

    assert len(first_file_labels("mixed", 0)) > 1
    assert first_file_labels("ordered", None) == {0}


def test_manifest_lists_checksums_and_is_the_only_entry_point(tmp_path):
    write_imagefolder(tmp_path / "src")
    shard(str(tmp_path / "src"), str(tmp_path / "out"))
    raw = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert raw["total_rows"] == 6 and len(raw["files"][0]["sha256"]) == 64
    assert raw["source"].endswith("src") and raw["tool_version"]
    assert not (tmp_path / "out" / "_parts").exists()  # resume markers are cleaned up
    (tmp_path / "out" / MANIFEST_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"no _manifest\.json"):
        read_manifest(str(tmp_path / "out"))


def test_bad_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory or file"):
        shard(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        shard(str(tmp_path / "flat"), str(tmp_path / "out"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        shard(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_bad_records_are_skipped_and_counted_or_stop_the_strict_run(tmp_path):
    write_imagefolder(tmp_path / "src", per_class=2)
    for name, data in bad_records().items():
        (tmp_path / "src" / "cat" / f"{name}.jpg").write_bytes(data)
    report = shard(str(tmp_path / "src"), str(tmp_path / "out"))
    m = report.manifest
    assert m.total_rows == 4 and m.bad_records == len(bad_records())
    assert sorted(m.bad_keys) == sorted(f"cat/{n}.jpg" for n in bad_records())
    assert {r["key"] for r in rows_of(tmp_path / "out")} == {
        "cat/0.jpg",
        "cat/1.jpg",
        "dog/0.jpg",
        "dog/1.jpg",
    }
    with pytest.raises(BadImageError, match=r"bad record cat/\S+\.jpg: .*policy 'strict'"):
        shard(str(tmp_path / "src"), str(tmp_path / "strict"), ShardOptions(bad_images="strict"))
    assert not (tmp_path / "strict" / MANIFEST_NAME).exists()


def test_max_side_reencodes_large_images_only_and_applies_exif_orientation(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    big = photo(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 200 wide, 300 high
    (tmp_path / "src" / "a" / "big.jpg").write_bytes(encode(big, "JPEG", exif=exif))
    small = encode(photo(80, 60), "PNG")
    (tmp_path / "src" / "a" / "small.png").write_bytes(small)
    options = ShardOptions(max_side=120, quality=75)
    shard(str(tmp_path / "src"), str(tmp_path / "out"), options)
    by_key = {r["key"]: r for r in rows_of(tmp_path / "out")}
    assert by_key["a/small.png"]["image"] == small
    assert (by_key["a/small.png"]["width"], by_key["a/small.png"]["height"]) == (80, 60)
    shrunk = Image.open(io.BytesIO(by_key["a/big.jpg"]["image"]))
    assert shrunk.format == "JPEG" and shrunk.size == (80, 120)  # orientation baked in
    assert (by_key["a/big.jpg"]["width"], by_key["a/big.jpg"]["height"]) == (80, 120)


def test_rerun_of_a_finished_set_does_nothing_and_other_options_are_refused(tmp_path):
    write_imagefolder(tmp_path / "src")
    first = shard(str(tmp_path / "src"), str(tmp_path / "out"))
    again = shard(str(tmp_path / "src"), str(tmp_path / "out"))
    assert again.already_complete and again.manifest.total_rows == first.manifest.total_rows
    # an unfinished run (plan claimed, no manifest) cannot be continued with other options
    (tmp_path / "out" / MANIFEST_NAME).unlink()
    (tmp_path / "out" / "_parts").mkdir()
    (tmp_path / "out" / "_parts" / "plan.json").write_text('{"fingerprint": "other"}')
    with pytest.raises(ConfigError, match=r"unfinished shard run of SRC .* with different options"):
        shard(str(tmp_path / "src"), str(tmp_path / "out"))


def test_resume_skips_finished_units_and_replaces_partial_files(tmp_path):
    write_imagefolder(tmp_path / "src", per_class=4)
    options = ShardOptions(target_bytes=1500)
    full = shard(str(tmp_path / "src"), str(tmp_path / "ref"), options)
    assert full.units >= 3
    # an interrupted run: the plan claimed, unit 0 finished, unit 1 half-written (its second
    # file recorded as started, which the re-run will not write again), no manifest
    from pipelines.data.manifest import resolve
    from pipelines.data.shard.destination import claim
    from pipelines.data.shard.inputs import plan_source
    from pipelines.data.shard.job import fingerprint
    from pipelines.data.shard.writer import run_unit

    src, dest = str(tmp_path / "src"), str(tmp_path / "out")
    plan = plan_source(src, target_bytes=options.target_bytes)
    fs, root = resolve(dest)
    fs.create_dir(root)
    claim(fs, root, src, dest, fingerprint(src, plan, options), len(plan.units))
    run_unit(plan.units[0], 0, dest, options)
    (tmp_path / "out" / "part-000001-000.parquet").write_bytes(b"PAR1 partial garbage")
    (tmp_path / "out" / "_parts" / "started" / "part-000001-009.parquet").write_bytes(b"")
    (tmp_path / "out" / "part-000001-009.parquet").write_bytes(b"PAR1 from the crash")
    (tmp_path / "out" / "part-000099-000.parquet").write_bytes(b"not ours: no record says so")

    report = shard(src, dest, options)
    assert report.resumed == 1 and report.units == full.units
    rows = rows_of(tmp_path / "out")
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 8
    assert sorted(keys) == sorted(r["key"] for r in rows_of(tmp_path / "ref"))
    assert not (tmp_path / "out" / "part-000001-009.parquet").exists()
    assert (tmp_path / "out" / "part-000099-000.parquet").read_bytes().startswith(b"not ours")
    assert not (tmp_path / "out" / "_parts").exists()


def test_write_shards_keeps_the_embedded_dataset_path(tmp_path):
    from pipelines.data.shard.writer import Row

    rows = [Row(f"k{i}", encode(photo(8, 8), "PNG"), i % 2, 8, 8) for i in range(5)]
    manifest = write_shards(rows, str(tmp_path / "out"), ["a", "b"], max_rows=2)
    assert [f.rows for f in manifest.files] == [2, 2, 1]
    assert [r["key"] for r in rows_of(tmp_path / "out")] == [f"k{i}" for i in range(5)]


def test_progress_off_a_terminal_is_plain_lines_ending_with_the_total():
    out = io.StringIO()  # not a terminal, as a log file or a Ray job's output
    bar = progress_bar("sslpipe shard", 3, "units", out)
    results = run_parallel(lambda x: 10 * x, [(1,), (2,), (3,)], 0, bar, count=lambda r: r)
    assert results == [10, 20, 30]
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redraws, no escape codes
    lines = text.splitlines()
    assert lines[0].startswith("sslpipe shard:   0%|") and " 0/3 " in lines[0]
    assert " 3/3 " in lines[-1] and lines[-1].endswith(", 60 images]")
    assert len(lines) == 2  # the interval is long: just the start and the end
