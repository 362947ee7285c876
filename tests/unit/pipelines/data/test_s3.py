"""S3 paths against a real S3-compatible server on localhost (moto), without Ray."""

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines.data.manifest import read_manifest, resolve
from pipelines.data.shard.job import shard
from pipelines.data.shard.verify import verify
from pipelines.data.shard.writer import ShardOptions
from tests.images import tar_bytes, write_imagefolder


def upload(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    fs, root = resolve(f"{bucket}/{prefix}")
    for name, data in files.items():
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(data)


def test_shard_and_verify_from_s3_to_s3(tmp_path, s3_bucket):
    written = write_imagefolder(tmp_path / "src", per_class=3)
    upload(s3_bucket, "raw", written)
    report = shard(f"{s3_bucket}/raw", f"{s3_bucket}/shards", ShardOptions(target_bytes=2000))
    assert report.manifest.class_names == ["cat", "dog"] and report.manifest.total_rows == 6
    manifest, fs, root = read_manifest(f"{s3_bucket}/shards")
    table = pq.read_table([f"{root}/{f.name}" for f in manifest.files], filesystem=fs)
    assert dict(zip(table["key"].to_pylist(), table["image"].to_pylist(), strict=True)) == written
    assert verify(f"{s3_bucket}/shards", progress=False).ok
    # no leftovers from the resume bookkeeping
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert not [n for n in names if "unit-" in n or n == "plan.json"]


def test_s3_tar_source_to_local_dest_is_read_by_ranges(tmp_path, s3_bucket):
    written = write_imagefolder(tmp_path / "src", per_class=4)
    upload(s3_bucket, "", {"data.tar": tar_bytes(written)})
    report = shard(f"{s3_bucket}/data.tar", str(tmp_path / "out"), ShardOptions(target_bytes=2000))
    assert report.units > 1 and report.manifest.total_rows == 8


def test_endpoint_from_an_argument_when_the_environment_has_none(s3_bucket, monkeypatch):
    import os

    url = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    fs, root = resolve(f"{s3_bucket}/x", endpoint=url)
    with fs.open_output_stream(f"{root}/probe") as f:
        f.write(b"ok")
    assert fs.get_file_info(f"{root}/probe").size == 2
    with pytest.raises(ValueError, match="needs a bucket"):
        resolve("s3://", endpoint=url)
