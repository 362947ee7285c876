"""``sslpipe eval knn|linear`` and ``sslpipe embed``: any registered encoder on any labeled
shard set (split rules in ``pipelines/eval/sets.py``).

An encoder is scored with the evaluation settings its run logged with it (image side, crop
fraction, k, T, …: ``pipelines.eval.encoders.logged_metadata``), so the same encoder on the
same shards reads back its run's own figure; ``--set eval.*`` overrides them one by one. An
encoder logged without them (by an older sslpipe) gets ``EvalConfig``'s defaults.
"""

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config.schema import DataConfig, EvalConfig
from pipelines.config.typed import from_dict
from pipelines.eval.encoders import load_logged
from pipelines.eval.frozen import KNN, LINEAR, embed, evaluate_encoders
from pipelines.eval.sets import EvalSplit


def _ray() -> None:
    """A local Ray for sets too large to decode here, started as every command starts one."""
    from pipelines.cluster.local import start_local_ray

    start_local_ray()


def _rows(path: str) -> int:
    """Rows of the shard set at ``path`` (0 for none): whether Ray is needed to read it."""
    from pipelines.data.manifest import read_manifest

    return read_manifest(path)[0].total_rows if path else 0


def settings_for(metadata: dict[str, Any], overrides: dict[str, Any]) -> EvalConfig:
    """The logged ``sslpipe_eval`` settings with ``overrides`` (``--set eval.*``) laid over
    them; keys this sslpipe does not know (logged by another version) are left out."""
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    logged = {k: v for k, v in (metadata.get("sslpipe_eval") or {}).items() if k in known}
    return from_dict(EvalConfig, {**logged, **overrides}, "eval")


def embedded_split(metadata: dict[str, Any]) -> EvalSplit:
    """The embedded set, train split as bank and test split as queries, at the sizes the
    encoder's run trained on (``sslpipe_embedded``; the defaults for a run on other data) and
    from its cache while that is there; generated if needed."""
    from pipelines.data.synthetic import ensure_embedded

    logged = metadata.get("sslpipe_embedded") or {}
    train_per_class = logged.get("train_per_class", DataConfig.embedded_train_per_class)
    test_per_class = logged.get("test_per_class", DataConfig.embedded_test_per_class)
    cache = logged.get("cache_dir", "")
    if not (cache and Path(cache).is_dir()):
        cache = DataConfig.cache_dir
    train, test = ensure_embedded(cache, train_per_class, test_per_class)
    return EvalSplit(train, test)


def _sized(encoder, settings: EvalConfig):
    """The encoder viewing images at ``settings.image_size`` where that is set."""
    if settings.image_size:
        encoder.image_size = settings.image_size
    return encoder


def evaluate_registered(
    kind: str,
    model_uri: str,
    tracking_uri: str,
    split: EvalSplit | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """kNN or linear-probe top-1 of a registered encoder on ``split`` (None: the embedded
    set, :func:`embedded_split`), with its logged evaluation settings and ``overrides``."""
    if kind not in ("knn", "linear"):
        raise ValueError(f"evaluation {kind!r} is not one of ['knn', 'linear']")
    encoder, metadata = load_logged(model_uri, tracking_uri)
    cfg = settings_for(metadata, overrides or {})
    encoder = _sized(encoder, cfg)
    if split is None:
        split = embedded_split(metadata)
    if max(_rows(split.train), _rows(split.eval)) > cfg.in_process_rows:
        _ray()
    scores = evaluate_encoders({"e": encoder}, split, cfg, knn=kind == "knn", linear=kind != "knn")
    if kind == "knn":
        detail = f"weighted kNN, k={cfg.knn_k}, T={cfg.knn_temperature}"
    else:
        detail = f"linear probe, {cfg.linear_epochs} epochs, lr {cfg.linear_lr}"
    view = f"{encoder.image_size}-pixel views, crop fraction {cfg.crop_fraction}"
    source = "logged with the model" if metadata.get("sslpipe_eval") else "sslpipe's defaults"
    given = f"; --set {', '.join(f'eval.{k}' for k in sorted(overrides or {}))}"
    return {
        "model": model_uri,
        "eval": kind,
        "top1": scores.top1["e"][KNN if kind == "knn" else LINEAR],
        "detail": f"{detail}, {view}",
        "settings": f"{source}{given if overrides else ''}",
        "split": split.note,
        "train_rows": scores.bank_rows,
        "test_rows": scores.query_rows,
    }


def write_embeddings(
    model_uri: str,
    tracking_uri: str,
    data: str,
    out: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embeddings of every labeled-or-not decodable row of ``data`` to Parquet:
    ``key: string, label: int32, embedding: fixed_size_list<float32>[D]``, viewed with the
    encoder's logged evaluation settings and ``overrides``."""
    from pipelines.eval.sets import eval_views

    encoder, metadata = load_logged(model_uri, tracking_uri)
    cfg = settings_for(metadata, overrides or {})
    encoder = _sized(encoder, cfg)
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
