"""``sslpipe eval knn|linear`` and ``sslpipe embed``: any registered encoder on any labeled
shard set (split rules in ``pipelines/eval/sets.py``)."""

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config.schema import EvalConfig
from pipelines.eval.encoders import load_registered
from pipelines.eval.frozen import KNN, LINEAR, embed, evaluate_encoders
from pipelines.eval.sets import EvalSplit


def _ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _rows(path: str) -> int:
    """Rows of the shard set at ``path`` (0 for none): whether Ray is needed to read it."""
    from pipelines.data.manifest import read_manifest

    return read_manifest(path)[0].total_rows if path else 0


def evaluate_registered(
    kind: str, model_uri: str, tracking_uri: str, split: EvalSplit, cfg: EvalConfig
) -> dict[str, Any]:
    """kNN (k, T from ``cfg``) or linear-probe top-1 of a registered encoder."""
    if kind not in ("knn", "linear"):
        raise ValueError(f"evaluation {kind!r} is not one of ['knn', 'linear']")
    encoder = load_registered(model_uri, tracking_uri)
    if max(_rows(split.train), _rows(split.eval)) > cfg.in_process_rows:
        _ray()
    scores = evaluate_encoders({"e": encoder}, split, cfg, knn=kind == "knn", linear=kind != "knn")
    if kind == "knn":
        detail = f"weighted kNN, k={cfg.knn_k}, T={cfg.knn_temperature}"
    else:
        detail = f"linear probe, {cfg.linear_epochs} epochs, lr {cfg.linear_lr}"
    return {
        "model": model_uri,
        "eval": kind,
        "top1": scores.top1["e"][KNN if kind == "knn" else LINEAR],
        "detail": detail,
        "split": split.note,
        "train_rows": scores.bank_rows,
        "test_rows": scores.query_rows,
    }


def write_embeddings(
    model_uri: str, tracking_uri: str, data: str, out: str, cfg: EvalConfig
) -> dict[str, Any]:
    """Embeddings of every labeled-or-not decodable row of ``data`` to Parquet:
    ``key: string, label: int32, embedding: fixed_size_list<float32>[D]``."""
    from pipelines.eval.sets import eval_views

    encoder = load_registered(model_uri, tracking_uri)
    local = cfg.in_process_rows
    if _rows(data) > local:
        _ray()
    ds, _ = eval_views(
        data,
        encoder.image_size,
        cfg.crop_fraction,
        keys=True,
        labeled_only=False,
        in_process_rows=local,
    )
    feats, labels, keys = embed({"e": encoder}, ds, cfg.batch_size, with_keys=True)
    x = feats["e"].numpy().astype("float32")
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "label": pa.array(labels.numpy().astype("int32")),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
        }
    )
    if "://" in out:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(out)
        pq.write_table(table, path, filesystem=fs)
    else:
        pq.write_table(table, out)
    return {"model": model_uri, "rows": table.num_rows, "dim": int(x.shape[1]), "out": out}
