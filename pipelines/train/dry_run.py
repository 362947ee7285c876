"""``sslpipe pretrain --dry-run``: everything a run needs, checked in this process in seconds.

Resolves the data (generating the embedded set if needed), reads the manifest, builds the model,
cuts one worker's batch of real views from the first shard file with the run's own view maker,
and takes one optimizer step with :class:`TrainStep` on the CPU: no Ray, no MLflow, nothing
written besides the embedded dataset's cache.
"""

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.config.schema import Config
from pipelines.data.manifest import Manifest, join, read_manifest
from pipelines.data.stream.device_views import CropPlanner, decode_views
from pipelines.data.stream.views import view_maker
from pipelines.train import batching
from pipelines.train.model import build_method
from pipelines.train.step import TrainStep, place


def steps_per_epoch(cfg: Config, manifest: Manifest, where: str) -> int:
    """Optimizer steps per epoch: the rows in whole global batches, at any worker count
    (``batching.steps_per_epoch``)."""
    steps = batching.steps_per_epoch(manifest.total_rows, cfg.train.batch_size)
    if steps < 1:
        raise ValueError(
            f"{where} holds {manifest.total_rows} images, fewer than one global batch of "
            f"train.batch_size={cfg.train.batch_size}; lower the batch size"
        )
    return steps


def first_rows(path: str, endpoint: str, rows: int) -> tuple[dict[str, np.ndarray], Manifest]:
    """The first ``rows`` rows (key, image, label) of the shard set, in manifest order."""
    manifest, fs, root = read_manifest(path, endpoint or None)
    tables = []
    for f in manifest.files:
        with fs.open_input_file(join(root, f.name)) as handle:
            tables.append(pq.read_table(handle, columns=["key", "image", "label"]))
        if sum(t.num_rows for t in tables) >= rows:
            break
    table = pa.concat_tables(tables).slice(0, rows)
    batch = {
        name: np.array(table.column(name).to_pylist(), dtype=object) for name in table.schema.names
    }
    batch["label"] = batch["label"].astype(np.int64)
    return batch, manifest


MAX_ROWS = 64  # a paper recipe's worker batch (e.g. 2048 at 224 pixels) is no quick CPU check


def dry_run(cfg: Config, train_path: str) -> dict[str, Any]:
    """One step on (up to ``MAX_ROWS`` of) one worker's batch; returns what ``--dry-run``
    prints. An elastic run's worker is sized at its fewest workers, the largest share."""
    started = time.perf_counter()
    plan = batching.plan_for(cfg.train, batching.worker_range(cfg.train.workers)[0])
    # whole micro-batches: the step cuts what it gets into plan.accumulate equal parts
    take = max(plan.accumulate, min(plan.per_worker, MAX_ROWS) // plan.accumulate * plan.accumulate)
    rows, manifest = first_rows(train_path, cfg.data.s3_endpoint, take)
    spe = steps_per_epoch(cfg, manifest, train_path)
    device = torch.device("cpu")
    if cfg.views.decode_device == "train":  # the training device's half on this CPU
        planned = CropPlanner(cfg.views, cfg.data.bad_images, seed=cfg.train.seed)(rows)
        views = decode_views(planned, cfg.views, device, cfg.data.bad_images)[0]
    else:
        views = view_maker(cfg.views, cfg.data.bad_images, seed=cfg.train.seed)(rows)
    labels = torch.as_tensor(views.pop("label")) if "label" in views else None
    batch = {k: torch.as_tensor(np.asarray(v)) for k, v in views.items() if k != "key"}
    torch.manual_seed(cfg.train.seed)
    method = place(build_method(cfg), cfg, device)
    classes = len(manifest.class_names)
    step = TrainStep(method, cfg, device, spe * cfg.train.epochs, spe, classes, plan.accumulate)
    result = step(batch, 0, labels)
    loss = float(result.loss)
    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    encoder = sum(p.numel() for p in method.encoder.parameters())
    return {
        "method": cfg.method,
        "profile": cfg.profile,
        "data": train_path,
        "images": manifest.total_rows,
        "classes": len(manifest.class_names),
        "steps_per_epoch": spe,
        "total_steps": spe * cfg.train.epochs,
        "views": {k: list(v.shape) for k, v in batch.items() if v.dtype == torch.uint8},
        "worker_batch": plan.per_worker,
        "micro_batches": plan.accumulate,
        "trainable_parameters": params,
        "encoder_parameters": encoder,
        "loss": loss,
        "seconds": round(time.perf_counter() - started, 1),
    }
