"""Ray Data datasets over manifest-listed shards, decoded into views by ``map_batches``.

Files are read by our own tasks from the manifest's list rather than by ``read_parquet``: the
manifest already names every file, and skipping Ray's per-execution file listing saves seconds
at every epoch (measured 0.3 s against 5-10 s per epoch on the embedded dataset).
"""

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import RandomSeedConfig

from pipelines.config import Config, ViewsConfig
from pipelines.data.manifest import Manifest, join, read_manifest
from pipelines.data.views import view_maker


def read_parquet_files(
    batch: dict[str, np.ndarray], columns: list[str] | None, filesystem: pafs.FileSystem
) -> Iterator[pa.Table]:
    """``map_batches`` generator: each path in the batch -> its row groups as tables, rows
    permuted within each group (file order is shuffled upstream)."""
    rng = np.random.default_rng()
    for path in batch["path"]:
        with filesystem.open_input_file(str(path)) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                yield table.take(rng.permutation(table.num_rows))


def read_shards(
    path: str, columns: list[str] | None = None, shuffle_seed: int | None = None
) -> tuple[ray.data.Dataset, Manifest]:
    """The rows of the files the manifest at ``path`` names, and the manifest.

    With ``shuffle_seed`` the file order is shuffled at every execution (epoch), differently
    each time but reproducibly from the seed.
    """
    manifest, fs, root = read_manifest(path)
    files = [join(root, f.name) for f in manifest.files if f.rows > 0]
    if not files:
        raise ValueError(f"{path}: the manifest lists no rows")
    ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files))
    if shuffle_seed is not None:
        # only the list of paths is materialised here, never the rows
        seed = RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
        ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(
        read_parquet_files,
        fn_kwargs={"columns": columns, "filesystem": fs},
        batch_size=1,
        batch_format="numpy",
    )
    return ds, manifest


def make_views(batch: dict, views: ViewsConfig, bad_images: str) -> dict:
    """Stateless ``map_batches`` function: tasks reuse Ray's worker processes from epoch to
    epoch, where an actor pool would be started anew at every execution."""
    return view_maker(views, bad_images)(batch)


def view_dataset(ds: ray.data.Dataset, views: ViewsConfig, cfg: Config) -> ray.data.Dataset:
    """Shard rows -> uint8 views per group plus labels (see ``views.ViewMaker``)."""
    return ds.map_batches(
        make_views,
        fn_kwargs={"views": views, "bad_images": cfg.data.bad_images},
        batch_size=cfg.data.decode_batch_size,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=cfg.data.decode_tasks),
        num_cpus=1,
    )


def training_dataset(cfg: Config, path: str) -> tuple[ray.data.Dataset, Manifest]:
    ds, manifest = read_shards(path, ["key", "image", "label"], cfg.data.shuffle_seed)
    return view_dataset(ds, cfg.views, cfg), manifest
