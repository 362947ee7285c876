"""Overhead of the Ray Train path over a bare PyTorch loop: same model, batch and pre-made tensors.

One run measures, in this order: a bare single-process loop (plain PyTorch: normalise, forward,
backward, optimizer step), ``TrainStep`` alone on the same tensors, then the full path
(``TorchTrainer`` with one worker running ``train_loop_per_worker``: Ray Data iteration of the
same tensors, ``TrainStep`` with its schedules and hooks, metrics to MLflow from rank 0,
reports), then the bare loop again to catch drift on a shared machine. All run one CPU thread
and no photometric augmentation on the train side (the tensors are final views), so they do the
same arithmetic.

    flock /tmp/sslpipe-heavy.lock .venv/bin/python -m benchmarks.train_overhead

Ratio = bare images/s ÷ Ray images/s (steady state: the Ray side's first epoch, which starts
workers and compiles nothing but warms every cache, is dropped). Target ≤ 1.05.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from pipelines.config.layers import load_config, parse_set
from pipelines.config.schema import Config
from pipelines.config.typed import to_dict
from pipelines.train.model import build_method
from pipelines.train.optim import build_optimizer
from pipelines.train.step import place


def config(batch: int, epochs: int, storage: str, tracking_uri: str) -> Config:
    return load_config(
        overrides=parse_set(
            [
                f"train.batch_size={batch}",
                "train.workers=1",
                "train.torch_threads=1",
                f"train.epochs={epochs}",
                f"train.checkpoint_every_epochs={epochs}",
                "train.log_every_steps=10",
                "views.augment_device=cpu",  # the tensors are final: no train-side work
                f"train.storage={storage}",
                f"tracking.uri={tracking_uri}",
                "tracking.flush_seconds=5",
            ]
        )
    )


def premade(cfg: Config, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = cfg.views.groups["global"]
    rng = np.random.default_rng(seed)
    return {
        "global": rng.integers(0, 256, (rows, g.count, 3, g.size, g.size), dtype=np.uint8),
        "label": rng.integers(0, 10, rows),
    }


def bare_loop(cfg: Config, data: dict[str, np.ndarray], warmup: int, steps: int) -> float:
    """Images/s of plain PyTorch over the same tensors, cycling through them."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    model = place(build_method(cfg), cfg, device)
    opt = build_optimizer(model, cfg.optim, cfg.train.batch_size)
    mean = torch.tensor(cfg.views.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 1, 3, 1, 1)
    views = torch.from_numpy(data["global"])
    b = cfg.train.batch_size
    n = views.shape[0] // b
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x = views[(i % n) * b : (i % n + 1) * b]
        batch = {"global": (x.float().div_(255) - mean) / std}
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * b / (time.perf_counter() - start)


def step_loop(cfg: Config, data: dict[str, np.ndarray], warmup: int, steps: int) -> float:
    """Images/s of ``TrainStep`` (schedules, hooks, metrics) over the same tensors, no Ray: what
    separates the bare loop from the Ray path that is not Ray."""
    from pipelines.train.step import TrainStep

    torch.set_num_threads(1)
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    step = TrainStep(place(build_method(cfg), cfg, device), cfg, device, warmup + steps, 100)
    views = torch.from_numpy(data["global"])
    b = cfg.train.batch_size
    n = views.shape[0] // b
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        step({"global": views[(i % n) * b : (i % n + 1) * b]}, i)
    return steps * b / (time.perf_counter() - start)


def ray_path(cfg: Config, data: dict[str, np.ndarray], name: str) -> tuple[list, list]:
    """Per-epoch images/s and data-wait fractions of the full path, as rank 0 logged them."""
    import ray
    from mlflow import MlflowClient

    from pipelines.tracking import runs as tracking
    from pipelines.train.trainer import build_trainer

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_numpy(data["global"]).rename_columns({"data": "global"})
    ds = ds.materialize()  # in the object store once: the path measured is ingest, not decode
    run_id = tracking.start_run(cfg, name)
    rows = data["global"].shape[0]
    loop_config = {
        "cfg": to_dict(cfg),
        "steps_per_epoch": rows // cfg.train.batch_size,
        "run_dir": f"{cfg.train.storage}/{name}",
        "run_id": run_id,
        "tracking_uri": cfg.tracking.uri,
    }
    build_trainer(cfg, ds, loop_config, name, cfg.train.storage).fit()
    client = MlflowClient(cfg.tracking.uri)
    return tuple(
        [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in ("epoch_images_per_sec", "epoch_data_wait_fraction")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    # 100-step epochs: each epoch carries a fixed ~0.4 s (not broken down; see BENCHMARKS.md)
    # that a real epoch of thousands of steps hides; 30-step epochs tripled its weight
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = config(args.batch, args.epochs, f"{d}/runs", f"sqlite:///{d}/mlflow.db")
        data = premade(cfg, args.batch * args.steps_per_epoch)
        timed = args.steps_per_epoch * (args.epochs - 1)
        bare_before = bare_loop(cfg, data, args.steps_per_epoch, timed)
        step_only = step_loop(cfg, data, args.steps_per_epoch, timed)
        epochs, waits = ray_path(cfg, data, "overhead")
        bare_after = bare_loop(cfg, data, args.steps_per_epoch, timed)
    bare = statistics.mean([bare_before, bare_after])
    ray_ips = statistics.mean(epochs[1:])  # drop the first epoch (start-up)
    g = cfg.views.groups["global"]
    result = {
        "model": f"{cfg.method} {cfg.backbone.name} width {cfg.backbone.width}",
        "views": f"{g.count}x{g.size}",
        "batch": args.batch,
        "steps_timed": timed,
        "bare_images_per_sec": [round(bare_before, 1), round(bare_after, 1)],
        "trainstep_no_ray_images_per_sec": round(step_only, 1),
        "ray_epoch_images_per_sec": [round(x, 1) for x in epochs],
        "ray_epoch_data_wait_fraction": [round(x, 3) for x in waits],
        "ratio_bare_over_ray": round(bare / ray_ips, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
