"""ImageNet's shape through the data plane: a million-row shard set in ImageNet's file count,
planned and streamed through decode and views (a benchmark, not a test: no assertions).

    flock /tmp/sslpipe-heavy.lock env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.scale_stream \\
        --cache /tmp/sslpipe-scale-cache --epochs 1 --json /tmp/q/scale.json

The shard set (generated once into ``--cache``, outside the checkout, and reused): ``--rows``
rows (default ImageNet-1k train's 1,281,167) written by ``sslpipe shard``'s own writer
(``write_shards``) into the number of files ImageNet takes at the writer's default file size:
~140 GB / 256 MiB = 522 files. The images are 64-pixel JPEGs of ~2.8 KB: 16 encoded payloads reused
under distinct keys and labels (1,000 classes), so generation costs a minute rather than an hour
of encoding and the set stays under 4 GB. Each row's bytes end with its own 8-byte index after
the JPEG's end marker (decoders ignore it): with 16 distinct values Parquet would store the
column as a dictionary, ~40x smaller than distinct images are. Every row is decoded and cropped
on its own. Files hold ImageNet's rows per file (~2,450) at ~7 MB, not 256 MiB.

Parts (``--parts``, all by default):

  shard   sharding rows/s of the job function ``sslpipe shard`` runs (``shard.job.shard``) over
          an ImageFolder of ``--shard-images`` distinct small JPEGs: in this process (0 tasks),
          then with Ray started as the command starts it for ``--workers 1`` and ``2``
          (num_cpus = tasks); Ray's start and its workers' first imports (a small folder
          sharded first) are not timed
  stream  the training stream as ``sslpipe pretrain`` builds it (``training_dataset``: the
          manifest's files, shuffled per epoch, read, decoded, cropped into the laptop profile's
          views), split over ``--consumers`` like Ray Train's workers (``streaming_split``,
          equal), consumed by threads of this process that do no training. Reported: time to
          plan (manifest read; dataset built), time to the first batch of each epoch, steady
          rows/s (first batch to last), and at 10 %, 50 % and 100 % of each epoch this process's
          RSS and the object store's use and spill
"""

import argparse
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

IMAGENET_TRAIN_ROWS = 1_281_167
IMAGENET_TRAIN_BYTES = 140e9  # ILSVRC2012 train, as distributed
PAYLOADS = 16
CLASSES = 1000
SIDE = 64
WARM_IMAGES = 400  # sharded untimed before each timed run
PLAN_FILES = (522, 5_220, 20_000)  # ImageNet's count at 256 MiB, then at 25.6 and ~7 MiB


def imagenet_file_count() -> int:
    """Files ImageNet-1k train fills at the writer's default target size."""
    from pipelines.data.shard.writer import DEFAULT_TARGET_BYTES

    return math.ceil(IMAGENET_TRAIN_BYTES / DEFAULT_TARGET_BYTES)


def small_jpeg(seed: int, quality: int = 90) -> bytes:
    """A 64-pixel gradient with noise (~2.8 KB at quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    base = np.stack([(x * 4 + seed * 30) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def ensure_shards(cache: Path, rows: int, files: int) -> tuple[Path, float]:
    """The cached shard set of ``rows`` rows in ``files`` files; (path, seconds spent writing,
    0 when reused)."""
    from pipelines.data.manifest import read_manifest
    from pipelines.data.shard.writer import Row, write_shards

    dest = cache / f"shards-{rows}-{files}"
    if (dest / "_manifest.json").exists():
        manifest = read_manifest(str(dest))[0]
        if manifest.total_rows == rows and len(manifest.files) == files:
            return dest, 0.0
        raise SystemExit(f"{dest} holds another shard set: remove it or pick another --cache")
    payloads = [small_jpeg(i) for i in range(PAYLOADS)]
    classes = [f"n{i:08d}" for i in range(CLASSES)]

    def generated():
        for i in range(rows):
            label = i % CLASSES
            key = f"{classes[label]}/{classes[label]}_{i}.JPEG"
            image = payloads[(i * 7 + label) % PAYLOADS] + i.to_bytes(8, "little")
            yield Row(key, image, label, SIDE, SIDE)

    started = time.perf_counter()
    manifest = write_shards(generated(), str(dest), classes, max_rows=math.ceil(rows / files))
    seconds = time.perf_counter() - started
    assert manifest.total_rows == rows and len(manifest.files) == files, (
        manifest.total_rows,
        len(manifest.files),
    )
    return dest, seconds


def ensure_folder(cache: Path, images: int) -> Path:
    """An ImageFolder of ``images`` distinct 64-pixel JPEGs in 10 classes."""
    folder = cache / f"folder-{images}"
    done = folder / ".complete"
    if done.exists():
        return folder
    for i in range(images):
        cls = folder / f"c{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"{i:06d}.jpg").write_bytes(small_jpeg(1000 + i))
    done.write_text("")
    return folder


def start_ray(num_cpus: int, store_mib: int) -> None:
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=store_mib * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure_sharding(cache: Path, images: int, unit_mib: float, store_mib: int) -> list[dict]:
    """Rows/s of ``shard.job.shard`` over the folder with 0 (in process), 1 and 2 tasks."""
    import ray

    from pipelines.data.shard.job import shard
    from pipelines.data.shard.writer import ShardOptions

    src, warm = ensure_folder(cache, images), ensure_folder(cache, WARM_IMAGES)
    options = ShardOptions(target_bytes=int(unit_mib * 2**20))
    out = []
    for tasks in (0, 1, 2):
        if tasks:
            start_ray(tasks, store_mib)  # as `sslpipe shard --workers N` starts it
        dest = Path(tempfile.mkdtemp(prefix="shard-", dir=cache))
        try:
            # untimed: Ray's workers start and import the writer once per `sslpipe shard`
            small = ShardOptions(target_bytes=int(0.1 * 2**20))
            shard(str(warm), str(dest / "warm"), small, workers=tasks, progress=False)
            started = time.perf_counter()
            report = shard(str(src), str(dest / "out"), options, workers=tasks, progress=False)
            seconds = time.perf_counter() - started
        finally:
            shutil.rmtree(dest)
            if tasks:
                ray.shutdown()
        rows = report.manifest.total_rows
        out.append(
            {
                "tasks": tasks,
                "units": report.units,
                "rows": rows,
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds, 1),
            }
        )
        print(f"shard: {out[-1]}", flush=True)
    return out


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def store_mib() -> tuple[float, float]:
    """(object store MiB in use now, MiB spilled so far), from Ray's memory summary."""
    import ray
    from ray._private.internal_api import memory_summary

    # this session's address: other Ray instances may run on the machine
    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return (float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0)


def stream_config(path: Path, decode_tasks: int):
    from pipelines.config.layers import load_config

    overrides = {
        "profile": "laptop",  # 32-pixel views, as `make run` trains
        "data": {"path": str(path), "decode_tasks": decode_tasks},
    }
    return load_config("simclr", overrides=overrides)


def measure_stream(args: argparse.Namespace, shards: Path) -> dict:
    """Plan, then stream ``args.epochs`` epochs into consumers that do no training."""
    import ray

    from pipelines.data.manifest import read_manifest
    from pipelines.data.stream.bad_images import create_counter
    from pipelines.data.stream.source import training_dataset

    start_ray(args.num_cpus, args.store_mib)
    cfg = stream_config(shards, args.decode_tasks)
    planning = [plan_without_files(args.cache, files, args.decode_tasks) for files in PLAN_FILES]
    rss_start = rss_mib()
    started = time.perf_counter()
    manifest = read_manifest(str(shards))[0]
    manifest_s = time.perf_counter() - started
    started = time.perf_counter()
    ds, _ = training_dataset(cfg, str(shards), create_counter())
    if args.stream_rows:
        ds = ds.limit(args.stream_rows)
    splits = ds.streaming_split(args.consumers, equal=True)
    plan_s = time.perf_counter() - started
    epoch_rows = args.stream_rows or manifest.total_rows
    per_consumer = cfg.train.batch_size // args.consumers
    result = {
        "files": len(manifest.files),
        "rows": manifest.total_rows,
        "streamed_rows_per_epoch": epoch_rows,
        "manifest_read_s": round(manifest_s, 3),
        "dataset_plan_s": round(plan_s, 3),
        "driver_rss_before_mib": round(rss_start, 1),
        "plan_without_files": planning,
        "epochs": [],
    }
    for epoch in range(args.epochs):
        result["epochs"].append(stream_epoch(splits, per_consumer, epoch_rows))
        print(f"epoch {epoch + 1}: {json.dumps(result['epochs'][-1])}", flush=True)
    result["driver_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    ray.shutdown()
    return result


def plan_without_files(cache: Path, files: int, decode_tasks: int) -> dict:
    """Seconds to read a manifest of ``files`` files (ImageNet's rows per file, the files
    themselves absent) and build the training dataset and its split over it: everything
    before the first read task runs."""
    from pipelines.data.manifest import Manifest, ShardFile, read_manifest, write_manifest
    from pipelines.data.manifest import resolve as resolve_fs
    from pipelines.data.stream.source import training_dataset

    rows = math.ceil(IMAGENET_TRAIN_ROWS / imagenet_file_count())
    where = Path(tempfile.mkdtemp(prefix="plan-", dir=cache))
    try:
        listed = [ShardFile(f"part-{i:06d}-000.parquet", rows, 0, "") for i in range(files)]
        fs, root = resolve_fs(str(where))
        write_manifest(fs, root, Manifest(listed, [f"n{i:08d}" for i in range(CLASSES)]))
        started = time.perf_counter()
        read_manifest(str(where))
        read_s = time.perf_counter() - started
        ds, _ = training_dataset(stream_config(where, decode_tasks), str(where))
        ds.streaming_split(2, equal=True)
        total_s = time.perf_counter() - started
    finally:
        shutil.rmtree(where)
    return {"files": files, "manifest_read_s": round(read_s, 3), "plan_s": round(total_s, 3)}


def stream_epoch(splits: list, batch: int, epoch_rows: int) -> dict:
    """One epoch: a thread per split iterates its batches (as a Ray Train worker does, with
    ``iter_torch_batches``) and counts rows; this thread samples memory as they go."""
    consumed = [0] * len(splits)
    first: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consume(i: int) -> None:
        try:
            for b in splits[i].iter_torch_batches(
                batch_size=batch, drop_last=True, prefetch_batches=2
            ):
                if not first:
                    with lock:
                        first.append(time.perf_counter())
                consumed[i] += len(b["label"])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    started = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(len(splits))]
    for t in threads:
        t.start()
    marks = {10: None, 50: None}
    peak_store = 0.0
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        used, spilled = store_mib()
        peak_store = max(peak_store, used)
        done = sum(consumed)
        for pct in marks:
            if marks[pct] is None and done >= epoch_rows * pct / 100:
                marks[pct] = sample(done, used, spilled, started)
    ended = time.perf_counter()
    if errors:
        raise errors[0]
    rows = sum(consumed)
    used, spilled = store_mib()
    first_s = first[0] - started if first else float("nan")
    return {
        "rows": rows,
        "seconds": round(ended - started, 1),
        "first_batch_s": round(first_s, 2),
        "steady_rows_per_s": round(rows / (ended - first[0]), 1) if first else 0.0,
        "at_10pct": marks[10],
        "at_50pct": marks[50],
        "at_100pct": sample(rows, used, spilled, started),
        "peak_store_mib": peak_store,
    }


def sample(rows: int, used: float, spilled: float, started: float) -> dict:
    return {
        "rows": rows,
        "t_s": round(time.perf_counter() - started, 1),
        "driver_rss_mib": round(rss_mib(), 1),
        "store_mib": used,
        "spilled_mib": spilled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sslpipe-scale-cache"))
    parser.add_argument("--rows", type=int, default=IMAGENET_TRAIN_ROWS, help="rows generated")
    parser.add_argument("--files", type=int, default=0, help="files (default: ImageNet's count)")
    parser.add_argument("--parts", nargs="+", default=["shard", "stream"])
    parser.add_argument("--shard-images", type=int, default=40_000)
    parser.add_argument("--shard-unit-mib", type=float, default=2.0, help="bytes per shard task")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--stream-rows", type=int, default=0, help="rows per epoch; 0: all")
    parser.add_argument("--consumers", type=int, default=2, help="like train.workers")
    parser.add_argument("--decode-tasks", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=3)
    parser.add_argument("--store-mib", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    files = args.files or imagenet_file_count()
    out: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if "shard" in args.parts:
        out["sharding"] = measure_sharding(
            args.cache, args.shard_images, args.shard_unit_mib, args.store_mib
        )
    if "stream" in args.parts:
        shards, write_s = ensure_shards(args.cache, args.rows, files)
        size = sum(p.stat().st_size for p in shards.glob("*.parquet"))
        out["shard_set"] = {
            "path": str(shards),
            "files": files,
            "gib": round(size / 2**30, 2),
            "written_s": round(write_s, 1),
        }
        print(f"shard set: {out['shard_set']}", flush=True)
        out["stream"] = measure_stream(args, shards)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
