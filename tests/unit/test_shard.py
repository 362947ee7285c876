import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.data.manifest import MANIFEST_NAME, read_manifest
from pipelines.data.shard import shard_imagefolder


def make_imagefolder(root, per_class=3, classes=("cat", "dog")):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_to_shards_and_manifest(tmp_path):
    make_imagefolder(tmp_path / "src")
    manifest = shard_imagefolder(str(tmp_path / "src"), str(tmp_path / "out"), target_bytes=200)
    assert manifest.class_names == ["cat", "dog"] and manifest.total_rows == 6
    assert len(manifest.files) > 1  # the tiny target forces several files
    read, _, _ = read_manifest(str(tmp_path / "out"))
    assert [f.name for f in read.files] == [f.name for f in manifest.files]
    rows = pq.read_table([str(tmp_path / "out" / f.name) for f in read.files]).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(
        f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)
    )
    by_key = {r["key"]: r for r in rows}
    assert by_key["dog/2.png"]["label"] == 1 and by_key["dog/2.png"]["width"] == 12
    img = Image.open(__import__("io").BytesIO(by_key["cat/1.png"]["image"]))
    assert np.asarray(img)[0, 0, 0] == 40  # original bytes, unchanged


def test_manifest_lists_checksums_and_is_the_only_entry_point(tmp_path):
    make_imagefolder(tmp_path / "src")
    shard_imagefolder(str(tmp_path / "src"), str(tmp_path / "out"))
    raw = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert raw["total_rows"] == 6 and len(raw["files"][0]["sha256"]) == 64
    (tmp_path / "out" / MANIFEST_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"no _manifest\.json"):
        read_manifest(str(tmp_path / "out"))


def test_bad_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        shard_imagefolder(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        shard_imagefolder(str(tmp_path / "flat"), str(tmp_path / "out"))
