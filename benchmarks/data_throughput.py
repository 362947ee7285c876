"""Input-pipeline throughput, SimCLR two views at 224, in one run (not a test: no assertions);
with --per-recipe, one core's cost per image of each paper recipe.

    flock /tmp/sslpipe-heavy.lock env PYTHONPATH=$PWD .venv/bin/python \\
        benchmarks/data_throughput.py --images 3000

Builds an ImageNet-like set from shared/data/imagenet-sample-1000.tar (--sample; real photos, median
500×375; beyond 1,000 images each photo is re-cropped to 85-100% of each side and re-encoded, so
copies differ but keep ImageNet sizes), as an ImageFolder and as sslpipe shards. Then measures
images/s, each from its first batch to its end (start-up excluded alike), of:

  (a) torchvision ImageFolder + DataLoader(num_workers = cores), the SimCLR transform twice
  (b) sslpipe's Ray Data path, photometric work on the CPU side (views.augment_device = cpu)
  (c) sslpipe's Ray Data path, photometric work on the "training device", batched in the
      consuming process (augment_device = train); without a GPU that device is this process's
      CPU, which shares the same cores with the decoding tasks
  (d) the decode-only ceiling: full PIL decode to RGB, no augmentation, `cores` processes
  (e) sslpipe's Ray Data path with decoding on the "training device" too
      (views.decode_device = train): the tasks read JPEG headers and draw crops, the consuming
      process decodes (torchvision decode_jpeg), crops, resizes and augments; on CPU the same
      caveat as (c)

``--per-recipe`` measures instead what one core does for each paper recipe (``--recipes``, their
``--profile paper`` views): one process, one torch thread, the real ``ViewMaker`` and
``apply_photometric`` on ``--photos`` of the sample's original JPEGs, batches of the recipe's
``data.decode_batch_size``. The CPU time splits into decode (header, draft-mode JPEG decode, RGB,
EXIF), geometry (crop boxes, resize, flip, stacking) and photometric (colour, blur, solarize).
Costs are the process's CPU time (``time.process_time``), so other work on a shared machine
does not inflate them; ``wall_over_cpu`` above 1 says how much it slowed the run.
docs/capacity.md turns the rates into cores per GPU:

    flock /tmp/sslpipe-heavy.lock env PYTHONPATH=$PWD .venv/bin/python \\
        benchmarks/data_throughput.py --per-recipe --photos 1000
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import random
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

# the checkout's sibling ``shared/`` (main in /work/main) or the machine's /work/shared: a
# worktree elsewhere still finds it; --sample names another copy
_NAME = Path("shared") / "data" / "imagenet-sample-1000.tar"
SAMPLE_CANDIDATES = [Path(__file__).resolve().parents[1].parent / _NAME, Path("/work") / _NAME]
BATCH = 64
RECIPES = ("simclr", "byol", "swav", "dino", "mae")


def default_sample() -> Path:
    return next((p for p in SAMPLE_CANDIDATES if p.exists()), SAMPLE_CANDIDATES[0])


def read_photos(sample: Path) -> list[tuple[str, bytes]]:
    """(file name, JPEG bytes) of every photo in the sample tar, sorted by name."""
    if not sample.exists():
        raise SystemExit(
            f"{sample} is absent: this benchmark needs the shared ImageNet sample (--sample)"
        )
    with tarfile.open(sample) as tar:
        photos = [
            (m.name.rsplit("/", 1)[-1], tar.extractfile(m).read())
            for m in tar
            if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg"))
        ]
    return sorted(photos)


def build(workdir: Path, images: int, sample: Path, seed: int = 0) -> tuple[Path, Path]:
    """ImageFolder (classes: the photos' wnids) and shards of ``images`` photos."""
    from PIL import Image

    from pipelines.data.shard.job import shard
    from pipelines.data.shard.writer import ShardOptions

    folder, shards = workdir / f"folder-{images}", workdir / f"shards-{images}"
    if (shards / "_manifest.json").exists():
        return folder, shards
    photos = read_photos(sample)
    rng = random.Random(seed)
    for i in range(images):
        name, data = photos[i % len(photos)]
        wnid = name.split("_", 1)[0]
        if i >= len(photos):  # a different crop of the same photo, ImageNet-sized still
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = img.size
            cw, ch = int(w * rng.uniform(0.85, 1)), int(h * rng.uniform(0.85, 1))
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            buf = io.BytesIO()
            img.crop((left, top, left + cw, top + ch)).save(buf, "JPEG", quality=90)
            data = buf.getvalue()
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / f"{i:06d}.JPEG").write_bytes(data)
    shard(str(folder), str(shards), ShardOptions(), workers=0, progress=False)
    return folder, shards


def timed(batches, count) -> float:
    """Images per second from the first batch to the last (the first batch is not counted)."""
    iterator = iter(batches)
    next(iterator)
    start, n = time.perf_counter(), 0
    for batch in iterator:
        n += count(batch)
    return n / (time.perf_counter() - start)


def simclr_transform():
    import torchvision.transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
        ]
    )


class TwoViews:
    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as Ray gives each 1-CPU task


def torchvision_rate(folder: Path, cores: int) -> float:
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=TwoViews(simclr_transform()))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=cores,
        worker_init_fn=lambda _: _one_thread(),
        drop_last=False,
    )
    return timed(loader, lambda b: len(b[1]))


def _decode(path: str) -> int:
    from PIL import Image

    with Image.open(path) as img:
        img.convert("RGB").load()
    return 1


def decode_rate(folder: Path, cores: int) -> float:
    files = sorted(str(p) for p in folder.rglob("*.JPEG"))
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode, files[: cores * 4])  # warm the workers
        start = time.perf_counter()
        n = sum(pool.imap_unordered(_decode, files, chunksize=16))
        return n / (time.perf_counter() - start)


def ray_rate(shards: Path, cores: int, augment_device: str, decode_device: str = "cpu") -> float:
    import torch

    from pipelines.config.layers import load_config, parse_set
    from pipelines.data.stream.device_views import decode_views
    from pipelines.data.stream.source import training_dataset
    from pipelines.data.stream.views import prepare_views

    cfg = load_config(
        "simclr",
        overrides=parse_set(
            [
                f"data.path={shards}",
                f"data.decode_tasks={cores}",
                f"views.augment_device={augment_device}",
                f"views.decode_device={decode_device}",
            ]
        ),
    )
    ds, _ = training_dataset(cfg, str(shards))
    device, g = torch.device("cpu"), torch.Generator().manual_seed(0)
    torch.set_num_threads(1)

    def consume(batch) -> int:
        if decode_device == "train":  # what the train loop does before TrainStep
            batch = decode_views(batch, cfg.views, device)[0]
        if augment_device == "train":  # what TrainStep does on its device before the model
            prepare_views(batch, cfg.views, device, g)
        return len(batch["label"])

    if decode_device == "train":  # encoded rows: numpy batches, as the train loop reads them
        batches = ds.iter_batches(batch_size=BATCH, prefetch_batches=2, batch_format="numpy")
    else:
        batches = ds.iter_torch_batches(batch_size=BATCH, prefetch_batches=2)
    return timed(batches, consume)


@contextlib.contextmanager
def timing_decode(spent: list[float]):
    """Adds the CPU seconds ``views.py`` spends in ``open_image`` and ``decode_rgb`` to
    ``spent[0]`` while the block runs (the functions as ``ViewMaker`` looks them up, restored
    after)."""
    from pipelines.data.stream import views as views_module

    originals = {name: getattr(views_module, name) for name in ("open_image", "decode_rgb")}

    def timed_version(fn):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - start

        return wrapper

    for name, fn in originals.items():
        setattr(views_module, name, timed_version(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(views_module, name, fn)


def describe_views(views) -> str:
    """e.g. ``2×224 + 6×96``."""
    return " + ".join(f"{g.count}×{g.size}" for g in views.groups.values() if g.count > 0)


def recipe_costs(method: str, photos: list[bytes], sets: Sequence[str] = (), seed: int = 0) -> dict:
    """One core's cost per image of ``method``'s paper-profile views: decode, geometry and
    photometric in CPU ms, and the images/s of one core with photometric on the CPU and on the
    GPU (``sets``: ``KEY=VALUE`` overrides, as ``--set``)."""
    import numpy as np
    import torch

    from pipelines.config.layers import deep_merge, load_config, parse_set
    from pipelines.data.stream.views import ViewMaker, apply_photometric

    # a data path selects the paper profile; views come out uint8, photometric timed apart
    overrides = {"data": {"path": "per-recipe"}, "views": {"augment_device": "train"}}
    cfg = load_config(method, overrides=deep_merge(overrides, parse_set(list(sets))))
    if cfg.views.recipe != "crops":
        raise SystemExit(f"{method}: --per-recipe measures crop recipes, not {cfg.views.recipe}")
    torch.set_num_threads(1)  # as Ray gives each 1-CPU task
    maker = ViewMaker(cfg.views, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    groups = {k: g for k, g in cfg.views.groups.items() if g.count > 0}
    batch_size = cfg.data.decode_batch_size

    def run(chunk: list[bytes]) -> tuple[float, float]:
        start = time.process_time()
        out = maker({"image": chunk})
        cropped = time.process_time()
        for name, group in groups.items():
            apply_photometric(out[name], group, generator)
        return cropped - start, time.process_time() - cropped

    run(photos[: min(8, len(photos))])  # warm-up: first calls, allocator, kernels
    decode, crops, photo = [0.0], 0.0, 0.0
    wall = time.perf_counter()
    with timing_decode(decode):
        for i in range(0, len(photos), batch_size):
            c, p = run(photos[i : i + batch_size])
            crops, photo = crops + c, photo + p
    wall = time.perf_counter() - wall
    if maker.skipped:
        raise SystemExit(f"{method}: {len(maker.skipped)} photos failed to decode")
    n = len(photos)
    ms = {"decode": decode[0], "geometry": crops - decode[0], "photometric": photo}
    return {
        "views": describe_views(cfg.views),
        "photos": n,
        "ms_per_image": {k: round(1000 * v / n, 2) for k, v in ms.items()},
        "images_per_sec_per_core": {
            "photometric_on_cpu": round(n / (crops + photo), 1),
            "photometric_on_gpu": round(n / crops, 1),
        },
        "photometric_share": round(photo / (crops + photo), 3),
        "wall_over_cpu": round(wall / (crops + photo), 2),
        "mean_megapixels": round(float(np.mean([_megapixels(p) for p in photos])), 3),
    }


def _megapixels(data: bytes) -> float:
    from pipelines.data.decode import open_image, oriented_size

    w, h = oriented_size(open_image(data))
    return w * h / 1e6


def per_recipe(args) -> dict:
    photos = read_photos(args.sample)
    rng = random.Random(0)  # the same photos for every recipe, sizes spread over the sample
    chosen = [data for _, data in rng.sample(photos, min(args.photos, len(photos)))]
    rates = {m: recipe_costs(m, chosen, args.set) for m in args.recipes}
    return {
        "mode": "per-recipe",
        "set": list(args.set),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "recipes": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default="/tmp/sslpipe-bench")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--sample", type=Path, default=default_sample(), help="imagenet-sample-1000.tar"
    )
    parser.add_argument(
        "--per-recipe",
        action="store_true",
        help="one core's decode / geometry / photometric cost per image of each paper recipe",
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="with --per-recipe")
    parser.add_argument("--photos", type=int, default=1000, help="with --per-recipe")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --per-recipe: a config override for every recipe (views.groups.local.count=10)",
    )
    args = parser.parse_args()
    if args.per_recipe:
        report = per_recipe(args)
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return
    folder, shards = build(Path(args.workdir), args.images, args.sample)

    import ray

    rates = {"d_decode_only": decode_rate(folder, args.cores)}
    rates["a_torchvision"] = torchvision_rate(folder, args.cores)
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rates["b_sslpipe_cpu"] = ray_rate(shards, args.cores, "cpu")
    rates["c_sslpipe_train"] = ray_rate(shards, args.cores, "train")
    rates["e_sslpipe_decode_train"] = ray_rate(shards, args.cores, "train", "train")
    ray.shutdown()

    a, d = rates["a_torchvision"], rates["d_decode_only"]
    report = {
        "images": args.images,
        "cores": args.cores,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "images_per_sec": {k: round(v, 1) for k, v in rates.items()},
        "b_over_a": round(rates["b_sslpipe_cpu"] / a, 2),
        "c_over_a": round(rates["c_sslpipe_train"] / a, 2),
        "e_over_a": round(rates["e_sslpipe_decode_train"] / a, 2),
        "fraction_of_d": {k: round(v / d, 3) for k, v in rates.items()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
