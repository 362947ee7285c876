"""Every input format of `sslpipe shard`, generated here, planned and read without Ray."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.manifest import read_manifest
from pipelines.data.shard.inputs import detect_format, plan_source
from pipelines.data.shard.inputs.webdataset import expand_braces, split_name
from pipelines.data.shard.job import shard
from pipelines.data.shard.writer import ShardOptions
from tests.images import bad_records, jpeg, tar_bytes, write_imagefolder


def rows_of(dest) -> list[dict]:
    manifest, _, root = read_manifest(str(dest))
    return pq.read_table([f"{root}/{f.name}" for f in manifest.files]).to_pylist()


def keyed(dest) -> dict[str, tuple[int, bytes]]:
    return {r["key"]: (r["label"], r["image"]) for r in rows_of(dest)}


def test_tar_of_class_folders_is_cut_into_spans_read_in_parallel(tmp_path):
    written = write_imagefolder(tmp_path / "folder", per_class=5)
    members = {f"train/{k}": v for k, v in written.items()}
    members["train/README.txt"] = b"a file beside the class folders"
    members["train/cat/labels.txt"] = b"not an image"
    (tmp_path / "a.tar").write_bytes(tar_bytes(members))
    assert detect_format(str(tmp_path / "a.tar"), "") == "tar"
    plan = plan_source(str(tmp_path / "a.tar"), target_bytes=2000)
    assert plan.class_names == ["cat", "dog"] and len(plan.units) > 2
    shard(str(tmp_path / "a.tar"), str(tmp_path / "out"), ShardOptions(target_bytes=2000))
    rows = keyed(tmp_path / "out")
    assert rows == {f"train/{k}": (0 if k.startswith("cat") else 1, v) for k, v in written.items()}


def test_a_tar_of_classes_holding_the_same_file_names_is_no_webdataset(tmp_path):
    members = {"cat/0.jpg": jpeg(20, 16, seed=1), "dog/0.jpg": jpeg(20, 16, seed=2)}
    (tmp_path / "a.tar").write_bytes(tar_bytes(members))  # keys cat/0 and dog/0 differ
    assert detect_format(str(tmp_path / "a.tar"), "") == "tar"


def test_imagenet_train_tar_of_per_class_tars(tmp_path):
    images = {
        wnid: {f"{wnid}_{i}.JPEG": jpeg(30, 20, seed=10 * c + i) for i in range(3)}
        for c, wnid in enumerate(["n02", "n01", "n03"])  # not in sorted order in the archive
    }
    outer = tar_bytes({f"{wnid}.tar": tar_bytes(files) for wnid, files in images.items()})
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(outer)
    src = str(tmp_path / "ILSVRC2012_img_train.tar")
    assert detect_format(src, "") == "imagenet-tar"
    report = shard(src, str(tmp_path / "out"))
    assert report.manifest.class_names == ["n01", "n02", "n03"] and report.units == 3
    expected = {
        f"{wnid}/{name}": (["n01", "n02", "n03"].index(wnid), data)
        for wnid, files in images.items()
        for name, data in files.items()
    }
    assert keyed(tmp_path / "out") == expected


def webdataset_shard(index: int, labels: str = "cls") -> tuple[bytes, dict[str, tuple]]:
    members, expected = {}, {}
    for i in range(3):
        key = f"{index:03d}{i:03d}"
        data = jpeg(24, 24, seed=index * 10 + i)
        members[f"{key}.jpg"] = data
        if labels == "cls":
            members[f"{key}.cls"] = f"{i}\n".encode()
        elif labels == "json":
            members[f"{key}.json"] = f'{{"label": {i}, "caption": "x"}}'.encode()
        members[f"{key}.txt"] = b"a caption"
        expected[f"shard-{index:03d}.tar/{key}"] = (i if labels != "none" else -1, data)
    members["999999.txt"] = b"a sample without an image is no record"
    return tar_bytes(members), expected


@pytest.mark.parametrize("labels", ["cls", "json", "none"])
def test_webdataset_shards_group_members_into_samples(tmp_path, labels):
    (tmp_path / "wds").mkdir()
    expected = {}
    for index in range(2):
        data, rows = webdataset_shard(index, labels)
        (tmp_path / "wds" / f"shard-{index:03d}.tar").write_bytes(data)
        expected |= rows
    assert detect_format(str(tmp_path / "wds"), "") == "webdataset"
    report = shard(str(tmp_path / "wds"), str(tmp_path / "out"))
    assert keyed(tmp_path / "out") == expected
    assert report.manifest.class_names == ([] if labels == "none" else ["0", "1", "2"])
    # the shard-list notation selects a subset
    pattern = str(tmp_path / "wds" / "shard-{001..001}.tar")
    shard(pattern, str(tmp_path / "one"))
    assert set(keyed(tmp_path / "one")) == {k for k in expected if k.startswith("shard-001")}


def test_webdataset_naming_conventions():
    assert split_name("a/b/000123.seg.png") == ("a/b/000123", "seg.png")
    assert split_name("x.JPG") == ("x", "jpg")
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_csv_list_with_class_names_relative_paths_and_missing_files(tmp_path):
    written = write_imagefolder(tmp_path / "imgs")
    lines = ["uri,label"] + [f"imgs/{k},{k.split('/')[0]}" for k in written]
    lines += ["imgs/gone.jpg,cat", f"{tmp_path}/imgs/cat/0.jpg,"]  # missing; absolute, no label
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    report = shard(str(tmp_path / "list.csv"), str(tmp_path / "out"))
    assert report.manifest.class_names == ["cat", "dog"]
    assert report.manifest.bad_records == 1 and report.manifest.bad_keys == ["imgs/gone.jpg"]
    rows = keyed(tmp_path / "out")
    assert rows[f"{tmp_path}/imgs/cat/0.jpg"] == (-1, written["cat/0.jpg"])
    assert rows["imgs/dog/2.jpg"] == (1, written["dog/2.jpg"])
    assert len(rows) == 7


def test_parquet_list_with_integer_labels_and_bad_records(tmp_path):
    (tmp_path / "imgs").mkdir()
    uris, labels = [], []
    for i in range(4):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg(20, 20, seed=i))
        uris.append(f"imgs/{i}.jpg")
        labels.append(i % 3)
    for name, data in bad_records().items():
        (tmp_path / "imgs" / name).write_bytes(data)
        uris.append(f"imgs/{name}")
        labels.append(0)
    pq.write_table(pa.table({"uri": uris, "label": labels}), tmp_path / "list.parquet")
    report = shard(str(tmp_path / "list.parquet"), str(tmp_path / "out"))
    assert report.manifest.class_names == ["0", "1", "2"]
    assert report.manifest.bad_records == len(bad_records())
    assert {k: v[0] for k, v in keyed(tmp_path / "out").items()} == {
        f"imgs/{i}.jpg": i % 3 for i in range(4)
    }


def test_list_errors_name_the_problem(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.jpg,1\n")
    with pytest.raises(ValueError, match="no uri column"):
        plan_source(str(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("uri\nx.jpg\n")
    with pytest.raises(ValueError, match="unknown input format"):
        plan_source(str(tmp_path / "b.csv"), fmt="zip")
