"""Fit the visual tokenizer BEiT and CAE predict, on a sample of the run's own training shards.

Runs on the driver before training (through ``pipelines.train.assets``): reads row groups of the
shards in a seeded order, cuts one training view per image with the run's own view recipe,
normalises it as the training step does, and fits ``ssl_models.tokenizer.KMeansTokenizer`` on a
subsample of the patches. The file goes to ``<run dir>/tokenizer.pt`` (local or s3://) and its path
into ``method_args.tokenizer.path``, so the workers, the evaluation and a resumed run load the same
one; a run that finds that file already there (a relaunch) reuses it.
"""

import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.config.schema import Config
from pipelines.data.manifest import join, read_manifest
from pipelines.data.stream.views import ViewMaker, prepare_views
from ssl_models.tokenizer import (
    KMeansTokenizer,
    build_tokenizer,
    save_tokenizer,
    tokenizer_bytes,
    tokenizer_for,
)

log = logging.getLogger(__name__)

PER_ROW_GROUP = 256  # at most this many images from one row group: spread over the data set
TOKENIZER_FILE = "tokenizer.pt"


def _group(cfg: Config) -> str:
    groups = cfg.views.groups
    return "global" if "global" in groups else next(iter(groups))


def training_views(cfg: Config, train_path: str, count: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches (b, 3, S, S) of one normalised training view each, ``count`` images in all,
    drawn from the row groups of the shards in a seeded order."""
    manifest, fs, root = read_manifest(train_path)
    units = []
    for f in manifest.files:
        if f.rows > 0:
            with fs.open_input_file(join(root, f.name)) as handle:
                units += [(f.name, g) for g in range(pq.ParquetFile(handle).num_row_groups)]
    rng = np.random.default_rng(seed)
    maker = ViewMaker(cfg.views, cfg.data.bad_images, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    group, taken = _group(cfg), 0
    for index in rng.permutation(len(units)):
        if taken >= count:
            break
        name, g = units[index]
        with fs.open_input_file(join(root, name)) as handle:
            table = pq.ParquetFile(handle).read_row_group(g, columns=["key", "image"])
        rows = rng.permutation(table.num_rows)[: min(PER_ROW_GROUP, count - taken)]
        batch = {
            "key": np.asarray(table.column("key").to_pylist(), dtype=object)[rows],
            "image": np.asarray(table.column("image").to_pylist(), dtype=object)[rows],
        }
        views = torch.from_numpy(maker(batch)[group][:, :1])  # (b, 1, 3, S, S) uint8
        taken += views.shape[0]
        yield prepare_views({group: views}, cfg.views, torch.device("cpu"), generator)[group][:, 0]


def fit_tokenizer(
    cfg: Config, batches: Iterable[torch.Tensor]
) -> tuple[KMeansTokenizer, dict[str, float]]:
    """Fit the configured tokenizer on normalised views (b, 3, S, S): per image, a random
    ``ceil(fit_patches / fit_images)`` of its patches enter k-means."""
    tcfg = cfg.method_args.tokenizer
    tok = build_tokenizer(tcfg, cfg.backbone.vit.patch_size)
    per_image = max(1, math.ceil(tcfg.fit_patches / tcfg.fit_images))
    g = torch.Generator().manual_seed(tcfg.seed)
    parts, images = [], 0
    for views in batches:
        feats = tok.features(views)  # (b, L, P)
        b, length, dim = feats.shape
        pick = torch.rand(b, length, generator=g).argsort(dim=1)[:, : min(per_image, length)]
        parts.append(
            torch.gather(feats, 1, pick.unsqueeze(-1).expand(-1, -1, dim)).reshape(-1, dim)
        )
        images += b
    if not parts:
        raise ValueError("no training images to fit the tokenizer on")
    stats = tok.fit(torch.cat(parts)[: tcfg.fit_patches], tcfg.fit_iters, tcfg.seed)
    return tok, {"images": float(images), **stats}


def _exists(path: str) -> bool:
    fs, inner = fsspec.core.url_to_fs(path)
    return fs.exists(inner)


def prepare_tokenizer(cfg: Config, train_path: str, run_dir: str) -> tuple[Config, list[str]]:
    """The config with ``method_args.tokenizer.path`` set to a fitted tokenizer, and the local
    file to log as the run's artifact."""
    tcfg = cfg.method_args.tokenizer
    patch = cfg.backbone.vit.patch_size
    path = tcfg.path or f"{run_dir}/{TOKENIZER_FILE}"
    if tcfg.path or _exists(path):
        tok = tokenizer_for(dataclasses.replace(tcfg, path=path), patch, cfg.method)
        print(f"sslpipe: {cfg.method} reuses the tokenizer {path}", flush=True)
    else:
        print(
            f"sslpipe: fitting the {cfg.method} tokenizer ({tcfg.kind}, {tcfg.codebook_size} "
            f"codes) on {tcfg.fit_images} training images",
            flush=True,
        )
        views = training_views(cfg, train_path, tcfg.fit_images, tcfg.seed)
        tok, stats = fit_tokenizer(cfg, views)
        if "://" not in path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        save_tokenizer(tok, path)
        print(
            f"sslpipe: tokenizer fitted on {stats['images']:.0f} images, "
            f"{stats['patches']:.0f} patches: {stats['codewords_used']:.0f} codewords in use, "
            f"mean squared distance {stats['mean_sq_distance']:.3f} -> {path}",
            flush=True,
        )
    local = path
    if "://" in path:  # MLflow logs local files
        local = os.path.join(tempfile.mkdtemp(prefix="sslpipe-tokenizer-"), TOKENIZER_FILE)
        with open(local, "wb") as f:
            f.write(tokenizer_bytes(tok))
    args = dataclasses.replace(cfg.method_args, tokenizer=dataclasses.replace(tcfg, path=path))
    return dataclasses.replace(cfg, method_args=args), [local]
