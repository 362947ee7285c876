"""The data plane on a real local Ray: sharding as parallel tasks, S3 in and out, training
input streamed from S3, bad records under both policies, and the bad-image counter."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.data.manifest import read_manifest, resolve
from pipelines.data.shard.job import shard
from pipelines.data.shard.verify import verify
from pipelines.data.shard.writer import Row, ShardOptions, write_shards
from pipelines.data.stream.bad_images import bad_image_report, create_counter
from pipelines.data.stream.source import read_shards, training_dataset
from tests.images import all_bad_records, jpeg, write_imagefolder

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def small_config(*extra: str):
    return load_config(
        overrides=parse_set(
            [
                "data.path=unused",  # the recipe's views, not the embedded profile
                "views.groups.global.size=16",
                "data.decode_batch_size=8",
                "data.decode_tasks=2",
                *extra,
            ]
        )
    )


def test_shard_s3_to_s3_with_ray_tasks_then_stream_training_views_from_s3(
    ray_local, tmp_path, s3_bucket
):
    written = write_imagefolder(tmp_path / "src", per_class=6, classes=("a", "b", "c"))
    fs, root = resolve(f"{s3_bucket}/raw")
    for key, data in written.items():
        with fs.open_output_stream(f"{root}/{key}") as f:
            f.write(data)
    dest = f"{s3_bucket}/shards"
    report = shard(f"{s3_bucket}/raw", dest, ShardOptions(target_bytes=3000), workers=2)
    assert report.units > 2 and report.manifest.total_rows == 18
    assert verify(dest, workers=2, progress=False).ok

    ds, _ = training_dataset(small_config(), dest)
    labels = []
    for batch in ds.iter_batches(batch_size=5, batch_format="numpy"):
        assert batch["global"].dtype == np.uint8 and batch["global"].shape[1:] == (2, 3, 16, 16)
        labels += batch["label"].tolist()
    assert sorted(labels) == sorted([0] * 6 + [1] * 6 + [2] * 6)
    # each epoch is a new execution with its own file order; every row, once per epoch
    rows = read_shards(dest, ["key"], shuffle_seed=0)[0]
    first = [r["key"] for r in rows.iter_rows()]
    second = [r["key"] for r in rows.iter_rows()]
    assert sorted(first) == sorted(second) == sorted(written)


def shards_with_bad_rows(dest: Path) -> tuple[int, list[str]]:
    """A shard set whose rows include undecodable images (written without validation, as a
    damaged or foreign shard set would be)."""
    rows = [Row(f"good/{i}", jpeg(24, 20, seed=i), i % 2, 24, 20) for i in range(20)]
    bad = [Row(f"bad/{name}", data, 0, 0, 0) for name, data in all_bad_records().items()]
    write_shards(rows[:10] + bad + rows[10:], str(dest), ["x", "y"], max_rows=7)
    return len(rows), sorted(r.key for r in bad)


def test_bad_rows_are_counted_once_under_skip_and_stop_the_run_under_strict(ray_local, tmp_path):
    good, bad_keys = shards_with_bad_rows(tmp_path / "shards")
    counter = create_counter()
    ds, _ = training_dataset(small_config(), str(tmp_path / "shards"), counter)
    for _ in range(2):  # two epochs: the same bad images are counted once
        seen = sum(len(b["label"]) for b in ds.iter_batches(batch_format="numpy"))
        assert seen == good
    report = bad_image_report(counter)
    assert report.count == len(bad_keys) and report.keys == bad_keys

    strict, _ = training_dataset(
        small_config("data.bad_images=strict"), str(tmp_path / "shards"), create_counter()
    )
    with pytest.raises(Exception, match=r"bad image bad/\S+: "):
        for _ in strict.iter_batches(batch_format="numpy"):
            pass


def test_bad_images_metric_reaches_mlflow_from_the_training_loop(ray_local, tmp_path):
    from mlflow import MlflowClient

    from pipelines.config.typed import to_dict
    from pipelines.tracking import runs as tracking
    from pipelines.train.trainer import build_trainer

    good, bad_keys = shards_with_bad_rows(tmp_path / "shards")
    cfg = load_config(
        overrides=parse_set(
            [
                "backbone.width=0.125",
                "backbone.name=resnet18",
                "method_args.proj_hidden_dim=32",
                "views.groups.global.size=16",
                "train.batch_size=8",
                "train.epochs=1",
                "train.workers=2",
                "train.log_every_steps=1",
                f"train.storage={tmp_path / 'runs'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"data.path={tmp_path / 'shards'}",
            ]
        )
    )
    counter = create_counter()
    ds, _ = training_dataset(cfg, cfg.data.path, counter)
    run_id = tracking.start_run(cfg, "bad-images")
    loop_config = {
        "cfg": to_dict(cfg),
        "steps_per_epoch": good // 8,
        "run_id": run_id,
        "tracking_uri": cfg.tracking.uri,
        "run_dir": "x",
        "bad_images_counter": counter,
    }
    build_trainer(cfg, ds, loop_config, "bad-images", str(tmp_path / "runs")).fit()
    history = MlflowClient(cfg.tracking.uri).get_metric_history(run_id, "bad_images")
    assert history and history[-1].value == len(bad_keys)


def test_an_interrupted_shard_run_resumes_without_duplicates_or_gaps(ray_local, tmp_path):
    src = tmp_path / "src"
    written = {}
    for c in range(4):  # 4 classes × 6 images of 640×480, re-encoded: seconds of work
        for i in range(6):
            (src / f"c{c}").mkdir(parents=True, exist_ok=True)
            data = jpeg(640, 480, seed=10 * c + i)
            (src / f"c{c}" / f"{i}.jpg").write_bytes(data)
            written[f"c{c}/{i}.jpg"] = data
    dest = tmp_path / "out"
    args = ["shard", str(src), str(dest), "--target-mb", "0.05", "--max-side", "256"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args, "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((dest / "_parts").glob("unit-*.json")):
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-way
        proc.wait()
    markers = list((dest / "_parts").glob("unit-*.json"))
    assert markers, "the run did not get as far as one finished unit in 120 s"
    assert not (dest / "_manifest.json").exists(), "the run finished before it was killed"

    report = shard(
        str(src),
        str(dest),
        ShardOptions(target_bytes=int(0.05 * 2**20), max_side=256),
        workers=2,
        progress=False,
    )
    assert 0 < report.resumed < report.units
    manifest, _, root = read_manifest(str(dest))
    import pyarrow.parquet as pq

    keys = pq.read_table([f"{root}/{f.name}" for f in manifest.files]).column("key").to_pylist()
    assert sorted(keys) == sorted(written)  # every image once: none missing, none twice
    assert verify(str(dest), progress=False).ok


def test_in_process_evaluation_views_equal_those_of_ray_tasks(ray_local, tmp_path):
    from pipelines.eval.sets import EvalSplit, LocalViews, split_views

    good, _ = shards_with_bad_rows(tmp_path / "shards")
    split = EvalSplit(str(tmp_path / "shards"), "")
    by_ray = split_views(split, 16, 0.875, keys=True)
    in_process = split_views(split, 16, 0.875, keys=True, in_process_rows=1000)
    assert not isinstance(by_ray[0], LocalViews) and isinstance(in_process[0], LocalViews)
    total = 0
    for ray_side, local_side in zip(by_ray, in_process, strict=True):
        views = []
        for ds in (ray_side, local_side):
            rows = {}
            for b in ds.iter_batches(batch_size=5, batch_format="numpy"):
                for key, image, label in zip(b["key"], b["image"], b["label"], strict=True):
                    rows[str(key)] = (image, int(label))
            views.append(rows)
        assert views[0].keys() == views[1].keys()
        for key, (image, label) in views[0].items():
            assert label == views[1][key][1] and np.array_equal(image, views[1][key][0]), key
        total += len(views[0])
    assert total == good  # every decodable row on one side or the other
