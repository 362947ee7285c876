"""GPU check: one bf16 training step of every registered method at its recipe's resolution (224
for the papers' recipes), then ResNet-50 SimCLR images/s, then images/s of decoding and making
SimCLR's views on the CPU (``views.decode_device: cpu``, one core) against on the GPU
(``decode_device: train``: nvJPEG). Needs PyTorch, torchvision, Pillow, numpy and PyYAML, not
Ray or MLflow (the GPU machine has neither).

    benchmarks/gpu_check.sh                 # on a GPU: the full check, under 5 minutes
    python -m benchmarks.gpu_check --tiny --device cpu   # the same code at toy sizes (a test)

Batches come from the real CPU-side view maker applied to synthetic JPEGs, so every key a
method's view recipe produces is there; they are uint8 on the device, and the train-side
photometric augmentation runs as in training. Exit status 1 when any method fails.
"""

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.config.layers import load_config
from pipelines.config.schema import Config
from pipelines.train.model import build_method
from pipelines.train.step import TrainStep, place
from ssl_models.registry import METHODS


@dataclass
class Row:
    method: str
    family: str
    backbone: str
    views: str
    status: str = "ok"
    loss: float = float("nan")
    ms_per_step: float = float("nan")
    peak_mib: float = float("nan")


def method_config(key: str, tiny: bool, batch: int) -> Config:
    """The paper's recipe at full size (a data path is set, so the laptop profile does not
    apply), or the laptop profile's 32-pixel version when ``tiny``."""
    overrides: dict = {
        "train": {"batch_size": batch, "workers": 1, "accumulate_steps": 1, "precision": "bf16"},
        "views": {"augment_device": "train"},
    }
    if not tiny:
        overrides["data"] = {"path": "gpu-check-synthetic"}
    return with_tokenizer(load_config(key, overrides=overrides))


def with_tokenizer(cfg: Config) -> Config:
    """BEiT and CAE predict the codes of a tokenizer ``sslpipe pretrain`` fits on the training
    data; here one is fitted on random views (only the step's cost matters) and saved to a
    temporary file."""
    tcfg = getattr(cfg.method_args, "tokenizer", None)
    if tcfg is None or tcfg.path:
        return cfg
    from pipelines.train.tokenizer import fit_tokenizer
    from ssl_models.tokenizer import save_tokenizer

    side = next(iter(cfg.views.groups.values())).size
    views = torch.randn(max(8, tcfg.fit_images // 64), 3, side, side, generator=torch.Generator())
    tok, _ = fit_tokenizer(cfg, [views])
    path = os.path.join(tempfile.mkdtemp(prefix="gpu-check-"), "tokenizer.pt")
    save_tokenizer(tok, path)
    args = dataclasses.replace(cfg.method_args, tokenizer=dataclasses.replace(tcfg, path=path))
    return dataclasses.replace(cfg, method_args=args)


def synthetic_jpegs(n: int, side: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (1, 1, 3))
        ramp = np.linspace(0, 1, side)[None, :, None] * rng.integers(0, 256, (1, 1, 3))
        pixels = np.clip(base * 0.5 + ramp * 0.5 + rng.normal(0, 20, (side, side, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_batch(cfg: Config, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch as the loop receives it: the view maker's output, tiled to ``batch``."""
    from pipelines.data.stream.views import view_maker

    n = min(batch, 8)
    side = max(g.size for g in cfg.views.groups.values()) + 32
    rows = {
        "key": np.array([f"synthetic/{i}.jpg" for i in range(n)], dtype=object),
        "image": np.array(synthetic_jpegs(n, side), dtype=object),
        "label": np.arange(n) % 2,
    }
    made = view_maker(cfg.views)(rows)  # crops, or a pretext task's views and targets
    made.pop("label", None)
    reps = -(-batch // n)
    out = {}
    for key, value in made.items():
        t = torch.as_tensor(np.asarray(value))
        out[key] = t.repeat(reps, *([1] * (t.ndim - 1)))[:batch].to(device)
    return out


def describe_views(cfg: Config) -> str:
    return " ".join(f"{g.count}x{g.size}" for g in cfg.views.groups.values() if g.count)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_method(key: str, tiny: bool, batch: int, device: torch.device) -> Row:
    cfg = method_config(key, tiny, batch)
    row = Row(key, METHODS[key].family, cfg.backbone.name, describe_views(cfg))
    try:
        torch.manual_seed(0)
        method = place(build_method(cfg), cfg, device)
        step = TrainStep(method, cfg, device, total_steps=100, steps_per_epoch=10)
        data = make_batch(cfg, batch, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(dict(data), 0)  # warm-up: kernels, allocator
        sync(device)
        t0 = time.perf_counter()
        result = step(dict(data), 1)
        sync(device)
        row.ms_per_step = (time.perf_counter() - t0) * 1000
        row.loss = float(result.loss)
        if device.type == "cuda":
            row.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        if not np.isfinite(row.loss):
            row.status = "non-finite loss"
    except Exception as e:  # one broken method must not hide the others
        row.status = f"FAILED: {type(e).__name__}: {str(e)[:120]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def simclr_throughput(tiny: bool, device: torch.device, steps: int) -> tuple[float, Config]:
    """Images/s of SimCLR training steps (ResNet-50, 224, batch 256, bf16 at full size)."""
    cfg = method_config("simclr", tiny, 8 if tiny else 256)
    torch.manual_seed(0)
    step = TrainStep(place(build_method(cfg), cfg, device), cfg, device, 1000, 100)
    data = make_batch(cfg, cfg.train.batch_size, device)
    for i in range(3):
        step(dict(data), i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(dict(data), 3 + i)
    sync(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - t0), cfg


def decode_throughput(tiny: bool, device: torch.device, images: int) -> dict[str, float]:
    """Images/s from JPEG bytes to augmented, normalised SimCLR views on ``device``, batches
    of 256 (tiny: 16) ImageNet-sized JPEGs (500×375; tiny 64×48), as Ray Data's tasks and the
    train loop would run them but in this process: ``cpu``, the CPU path (decode, crops on
    one core, photometric on the device); ``plan``, the CPU side of ``decode_device: train``
    alone (headers and crop geometry, one core); ``device``, its device side (decode, crops,
    photometric on the device)."""
    from pipelines.data.stream.device_views import CropPlanner, decode_views
    from pipelines.data.stream.views import ViewMaker, prepare_views

    cfg = load_config(
        "simclr",
        overrides={
            "views": {"decode_device": "train"},
            **({} if tiny else {"data": {"path": "x"}}),
        },
    )
    batch = 16 if tiny else 256
    w, h = (64, 48) if tiny else (500, 375)
    jpegs = [encode_jpeg(p) for p in synthetic_photos(min(images, batch), w, h)]
    rows = {
        "key": np.array([f"synthetic/{i}.jpg" for i in range(batch)], dtype=object),
        "image": np.array([jpegs[i % len(jpegs)] for i in range(batch)], dtype=object),
        "label": np.zeros(batch, dtype=np.int64),
    }
    g = torch.Generator(device=device).manual_seed(0)
    cpu_views = dataclasses.replace(cfg.views, decode_device="cpu")
    planner, maker = CropPlanner(cfg.views, seed=0), ViewMaker(cpu_views, seed=0)

    def cpu_path() -> None:
        made = {k: torch.from_numpy(v) for k, v in maker(rows).items()}
        prepare_views(made, cfg.views, device, g)

    planned = planner(rows)

    def device_path() -> None:
        prepare_views(decode_views(planned, cfg.views, device)[0], cfg.views, device, g)

    rates = {}
    for name, run in (("cpu", cpu_path), ("plan", lambda: planner(rows)), ("device", device_path)):
        run()  # warm-up: nvJPEG handles, kernels, allocator
        sync(device)
        t0, n = time.perf_counter(), 0
        while n < images:
            run()
            n += batch
        sync(device)
        rates[name] = n / (time.perf_counter() - t0)
    return rates


def synthetic_photos(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth colour fields with mild noise: JPEG sizes like photos' (noise alone would not be)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        phase, freq = rng.uniform(0, 6.28, 3), rng.uniform(2, 12, 3)
        rgb = [
            127 + 100 * np.sin(x / width * freq[c] + phase[c]) * np.cos(y / height * freq[c])
            for c in range(3)
        ]
        pixels = np.stack(rgb, -1) + rng.normal(0, 6, (height, width, 3))
        out.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return out


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="32-pixel laptop profile, batch 4")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="per-method batch (default 64; tiny 4)")
    p.add_argument("--steps", type=int, help="timed SimCLR steps (default 20; tiny 2)")
    p.add_argument("--methods", nargs="*", help="only these method keys")
    p.add_argument("--budget-s", type=float, default=240.0, help="skip methods after this")
    p.add_argument("--decode-images", type=int, help="images per decode path (default 1024)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.tiny:
        print("gpu_check: no GPU here; use --tiny --device cpu for the toy-sized run")
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, bf16 autocast, tiny={args.tiny}")
    batch = args.batch or (4 if args.tiny else 64)
    started = time.perf_counter()
    rows = []
    for key in args.methods or list(METHODS):
        if time.perf_counter() - started > args.budget_s:
            rows.append(Row(key, METHODS[key].family, "-", "-", status="skipped (time budget)"))
            continue
        rows.append(check_method(key, args.tiny, batch, device))

    print(f"\n{'method':<14} {'family':<24} {'backbone':<12} {'views':<14} "
          f"{'loss':>8} {'ms/step':>8} {'peak MiB':>9}  status  (batch {batch})")  # fmt: skip
    for r in rows:
        print(
            f"{r.method:<14} {r.family:<24} {r.backbone:<12} {r.views:<14} "
            f"{r.loss:>8.3f} {r.ms_per_step:>8.1f} {r.peak_mib:>9.0f}  {r.status}"
        )
    ips, cfg = simclr_throughput(args.tiny, device, args.steps or (2 if args.tiny else 20))
    print(
        f"\nSimCLR {cfg.backbone.name} {describe_views(cfg)} batch {cfg.train.batch_size} bf16: "
        f"{ips:.0f} images/s  ({name})"
    )
    n = args.decode_images or (32 if args.tiny else 1024)
    rates = decode_throughput(args.tiny, device, n)
    size = "64x48" if args.tiny else "500x375"
    print(
        f"decode + SimCLR views ({size} JPEGs): CPU path {rates['cpu']:.0f} images/s on one "
        f"core; decode_device train: {rates['device']:.0f} images/s on {name}, its CPU side "
        f"{rates['plan']:.0f} images/s on one core"
    )
    print(f"gpu_check: {time.perf_counter() - started:.0f} s")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
