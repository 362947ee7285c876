"""Which labeled rows an evaluation uses, as Ray datasets of evaluation views.

Split rules, the same for the final kNN of ``pretrain``, the online monitor and ``sslpipe eval``:

- with a separate labeled set (``--eval-data`` / ``data.eval_path``): the training shards are
  the bank (kNN) or the training set (linear probe), the eval shards are the queries / test set;
- without one: a fixed 10% of the training rows, chosen by a hash of each row's key (stable
  across runs, machines and shard layouts), are the queries / test set, the other 90% the bank;
- the online monitor takes fixed subsets of those, again by key hash, sized by
  ``eval.monitor_bank_rows`` and ``eval.monitor_query_rows``;
- rows labeled -1 (unknown) are dropped.

Where the views are made: a set of at most ``eval.in_process_rows`` rows is read and decoded in
the calling process (``LocalViews``), since starting Ray tasks costs more than decoding a few
thousand images (the embedded set's final kNN: about 17 s against about 3 s); larger
sets stream through Ray Data tasks, on the data nodes when ``data.task_resources`` says so.
Both hand out the same batches through ``iter_batches``. ``held_views`` decodes a small
set's views once and keeps them (``HeldViews``): ``pretrain`` makes its final evaluation's views
that way while Ray starts the workers (``pipelines/train/wrapup.py``).
"""

import zlib
from dataclasses import dataclass

import numpy as np

HOLDOUT = 0.1  # fraction of training rows used as queries when no eval set is given


@dataclass(frozen=True)
class EvalSplit:
    train: str  # shards of the bank / probe training set
    eval: str  # labeled shards of the queries / test set ("" when carved out of ``train``)

    @property
    def note(self) -> str:
        if self.eval:
            return f"bank {self.train}, queries {self.eval}"
        return f"a fixed {HOLDOUT:.0%} of {self.train}'s rows (by key hash) as queries"

    def empty(self, side: str, train_rows: int) -> str:
        """Why the ``bank`` or the ``queries`` hold no labeled image, and what to do about it
        (``train_rows``: rows of the training shards, labeled or not)."""
        if side == "queries" and not self.eval:
            return (
                f"no queries: the fixed {HOLDOUT:.0%} of {self.train}'s {train_rows} rows held "
                "out by key hash holds no labeled, decodable image (a set this small leaves it "
                "empty); give a labeled set as queries with --eval-data (data.eval_path)"
            )
        if side == "queries":
            return f"no queries: {self.eval} holds no labeled, decodable image"
        rest = f" outside the {HOLDOUT:.0%} held out as queries" if not self.eval else ""
        return f"no bank: {self.train} ({train_rows} rows) holds no labeled, decodable image{rest}"


def key_fraction(key: str) -> float:
    """A stable pseudo-random number in [0, 1) per row key, for deterministic splits."""
    return (zlib.crc32(key.encode()) % 1_000_003) / 1_000_003


def _select(
    batch: dict[str, np.ndarray], lo: float, hi: float, labeled_only: bool
) -> dict[str, np.ndarray]:
    pairs = zip(batch["key"], batch["label"], strict=True)
    keep = [lo <= key_fraction(str(k)) < hi and (int(y) >= 0 or not labeled_only) for k, y in pairs]
    return {name: column[np.asarray(keep, dtype=bool)] for name, column in batch.items()}


def _eval_views(batch: dict[str, np.ndarray], size: int, crop_fraction: float, keys: bool):
    """Rows -> evaluation views; with ``keys`` the row keys ride along (undecodable rows are
    skipped, so each row goes through the view maker alone to keep keys aligned)."""
    from pipelines.data.stream.views import EvalViewMaker

    maker = EvalViewMaker(size, crop_fraction)
    if not keys:
        return maker(batch)
    images, labels, kept = [], [], []
    for i in range(len(batch["image"])):
        out = maker({name: column[i : i + 1] for name, column in batch.items()})
        if len(out["label"]):
            images.append(out["image"][0])
            labels.append(out["label"][0])
            kept.append(str(batch["key"][i]))
    return {
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "label": np.asarray(labels, dtype=np.int64),
        "key": np.asarray(kept, dtype=object),
    }


class LocalViews:
    """Evaluation views of a small shard set, read and decoded in this process on demand; the
    same rows and batches as the Ray dataset ``eval_views`` would build (see the module doc)."""

    def __init__(self, shards: tuple, size: int, crop_fraction: float, selection: dict, keys: bool):
        self.shards = shards  # what read_manifest returned: (manifest, filesystem, root)
        self.size, self.crop_fraction = size, crop_fraction
        self.selection, self.keys = selection, keys

    def _views(self):
        """Views of the selected rows, a row group at a time (decoded 256 rows at most)."""
        import pyarrow.parquet as pq

        from pipelines.data.manifest import join

        manifest, fs, root = self.shards
        for f in manifest.files:
            if f.rows == 0:
                continue
            with fs.open_input_file(join(root, f.name)) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=["key", "image", "label"])
                    rows = {
                        c: table.column(c).to_numpy(zero_copy_only=False)
                        for c in table.column_names
                    }
                    rows = _select(rows, **self.selection)
                    for i in range(0, len(rows["label"]), 256):
                        chunk = {c: v[i : i + 256] for c, v in rows.items()}
                        yield _eval_views(chunk, self.size, self.crop_fraction, self.keys)

    def iter_batches(self, batch_size: int = 256, batch_format: str = "numpy"):
        """Batches of exactly ``batch_size`` views (the last one may be smaller), as Ray's."""
        if batch_format != "numpy":
            raise ValueError(f"in-process evaluation views come as numpy, not {batch_format!r}")
        pending: dict[str, np.ndarray] | None = None
        for views in self._views():
            if pending is not None:
                views = {c: np.concatenate([pending[c], views[c]]) for c in views}
            n = len(views["label"])
            for i in range(0, n - n % batch_size, batch_size):
                yield {c: v[i : i + batch_size] for c, v in views.items()}
            pending = {c: v[n - n % batch_size :] for c, v in views.items()}
        if pending is not None and len(pending["label"]):
            yield pending


class HeldViews:
    """Evaluation views decoded once and kept in memory: the batches ``iter_batches`` of the
    views they were made from hands out, as often as asked."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values())

    def iter_batches(self, batch_size: int = 256, batch_format: str = "numpy"):
        if batch_format != "numpy":
            raise ValueError(f"held evaluation views come as numpy, not {batch_format!r}")
        n = len(self.columns["label"])
        for i in range(0, n, batch_size):
            yield {c: v[i : i + batch_size] for c, v in self.columns.items()}

    @classmethod
    def of(cls, views: "LocalViews") -> "HeldViews":
        parts = list(views._views())
        if not parts:  # iterates as nothing, as the views it came from
            images = np.zeros((0, 3, views.size, views.size), np.uint8)
            return cls({"image": images, "label": np.zeros(0, np.int64)})
        return cls({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})


def held_views(
    split: "EvalSplit", size: int, crop_fraction: float, in_process_rows: int, max_bytes: int
) -> "tuple[HeldViews, HeldViews] | None":
    """``split_views(split, size, crop_fraction)`` decoded now and kept, when both sides are
    sets of at most ``in_process_rows`` rows whose views fit in ``max_bytes`` together (before
    the label filter: an upper bound); otherwise None (make them when needed)."""
    from pipelines.data.manifest import read_manifest

    if in_process_rows <= 0:
        return None
    paths = {split.train} | ({split.eval} if split.eval else set())
    rows = {path: read_manifest(path)[0].total_rows for path in paths}
    if max(rows.values()) > in_process_rows or sum(rows.values()) * 3 * size * size > max_bytes:
        return None
    bank, queries = split_views(split, size, crop_fraction, in_process_rows=in_process_rows)
    return HeldViews.of(bank), HeldViews.of(queries)


def eval_views(
    path: str,
    size: int,
    crop_fraction: float,
    lo: float = 0.0,
    hi: float = 1.0,
    keys: bool = False,
    labeled_only: bool = True,
    resources: dict[str, float] | None = None,
    in_process_rows: int = 0,
):
    """Evaluation views of the shard rows whose key fraction is in [lo, hi) (labeled ones only,
    unless told): ``image`` uint8 (3, S, S), ``label``, ``key`` if asked; a Ray dataset, or a
    ``LocalViews`` when the set holds at most ``in_process_rows`` rows. ``resources``: custom
    Ray resources of every task (``data.task_resources``)."""
    import ray

    from pipelines.data.manifest import read_manifest
    from pipelines.data.stream.source import read_shards

    selection = {"lo": lo, "hi": hi, "labeled_only": labeled_only}
    if in_process_rows > 0:
        shards = read_manifest(path)
        if shards[0].total_rows <= in_process_rows:
            return LocalViews(shards, size, crop_fraction, selection, keys), shards[0]
    ds, manifest = read_shards(path, ["key", "image", "label"], resources=resources)
    remote_args = {"resources": resources} if resources else {}
    ds = ds.map_batches(_select, fn_kwargs=selection, batch_format="numpy", **remote_args)
    ds = ds.map_batches(
        _eval_views,
        fn_kwargs={"size": size, "crop_fraction": crop_fraction, "keys": keys},
        batch_format="numpy",
        batch_size=256,
        compute=ray.data.TaskPoolStrategy(size=2),
        **remote_args,
    )
    return ds, manifest


def split_views(
    split: EvalSplit,
    size: int,
    crop_fraction: float,
    bank_fraction: float = 1.0,
    query_fraction: float = 1.0,
    keys: bool = False,
    resources: dict[str, float] | None = None,
    in_process_rows: int = 0,
):
    """(bank, queries) datasets under the rules above; the fractions cut each side to a fixed
    key-hash subset (the online monitor's). ``resources``, ``in_process_rows``: see
    ``eval_views``."""
    b, q = min(1.0, bank_fraction), min(1.0, query_fraction)
    r = {"resources": resources, "in_process_rows": in_process_rows}
    if split.eval:
        bank, _ = eval_views(split.train, size, crop_fraction, 0.0, b, keys, **r)
        queries, _ = eval_views(split.eval, size, crop_fraction, 0.0, q, keys, **r)
    else:
        hi = HOLDOUT + (1 - HOLDOUT) * b
        bank, _ = eval_views(split.train, size, crop_fraction, HOLDOUT, hi, keys, **r)
        queries, _ = eval_views(split.train, size, crop_fraction, 0.0, HOLDOUT * q, keys, **r)
    return bank, queries
