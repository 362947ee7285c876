from pipelines.data.shard.job import shard
from pipelines.data.shard.verify import verify
from tests.images import write_imagefolder


def test_verify_passes_a_fresh_set_and_names_each_kind_of_damage(tmp_path):
    write_imagefolder(tmp_path / "src", per_class=4)
    report = shard(str(tmp_path / "src"), str(tmp_path / "out")).manifest
    assert len(report.files) >= 1
    ok = verify(str(tmp_path / "out"), progress=False)
    assert ok.ok and ok.files == len(report.files) and ok.rows == 8

    # a flipped byte, a stray file (harmless), then a missing file
    first = tmp_path / "out" / report.files[0].name
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    (tmp_path / "out" / "part-999999-000.parquet").write_bytes(b"unlisted")
    bad = verify(str(tmp_path / "out"), progress=False)
    assert not bad.ok
    assert bad.problems == [f"{report.files[0].name}: sha256 differs from the manifest"]
    assert bad.notes == ["part-999999-000.parquet: present but not in the manifest (ignored)"]
    first.unlink()
    assert verify(str(tmp_path / "out"), progress=False).problems == [
        f"{report.files[0].name}: missing"
    ]


def test_verify_catches_a_truncated_file_and_wrong_counts(tmp_path):
    import json

    write_imagefolder(tmp_path / "src", per_class=2)
    shard(str(tmp_path / "src"), str(tmp_path / "out"))
    manifest_path = tmp_path / "out" / "_manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw["files"][0]["rows"] += 1
    raw["total_rows"] += 1
    manifest_path.write_text(json.dumps(raw))
    problems = verify(str(tmp_path / "out"), progress=False).problems
    name = raw["files"][0]["name"]
    assert problems == [
        f"{name}: {raw['files'][0]['rows'] - 1} rows, manifest says {raw['files'][0]['rows']}"
    ]
