"""MLflow: runs, redacted params and tags, checkpoint records, the encoder as a model, the
registry. Metrics from rank 0 go through :class:`pipelines.tracking.metric_logger.MetricLogger`.
"""

import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param

from pipelines.config.schema import Config
from pipelines.config.typed import flatten, to_dict

# checkpoint records live beside this module; callers reach them through it too
from pipelines.tracking.checkpoint_records import checkpoint_tags as checkpoint_tags
from pipelines.tracking.checkpoint_records import checkpoints_of as checkpoints_of
from pipelines.tracking.model_card import CARD_TAGS
from pipelines.tracking.secrets import redact, redact_text, redact_tree


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def absolute_uri(uri: str) -> str:
    """Make a relative SQLite URI absolute, so Ray workers in other directories find it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def sqlite_file(uri: str) -> Path | None:
    """The database file a ``sqlite:///`` URI names (None for other stores)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :].split("?", 1)[0]) if uri.startswith(prefix) else None


def require_store(uri: str) -> None:
    """A LookupError when ``uri`` names a SQLite file that does not exist. Opening it would
    create an empty store there, which then has no run or model to find: a command that only
    reads never makes one."""
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise LookupError(
            f"no MLflow store at {path}: the tracking URI {uri} names a SQLite file that does "
            "not exist (none was created); pass --tracking-uri with the store the run logged "
            "to (the tracking_uri of its summary)"
        )


def open_store(uri: str) -> Future:
    """Open the tracking store at ``uri`` in a thread: MLflow's SQL store imports its ORM and
    migrates a new database (~3 s of a run's start, BENCHMARKS), which can overlap Ray's
    start. Call ``.result()`` before this process's next MLflow call: MLflow keeps one store
    per URI, and two threads making it at once would both migrate a new database. It re-raises
    what opening raised."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-store")
    opened = pool.submit(MlflowClient, absolute_uri(uri))
    pool.shutdown(wait=False)
    return opened


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # artifacts beside the database file, not wherever the process happens to run
        location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def params_of(cfg: Config) -> dict[str, str]:
    """The flattened config as MLflow params: redacted, long values truncated."""
    return {k: v[:6000] for k, v in redact(flatten(to_dict(cfg))).items()}


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create the run of one pretraining, log its params; return the run id."""
    uri = absolute_uri(cfg.tracking.uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, uri, cfg.tracking.experiment)
    run = client.create_run(exp, run_name=run_name, tags=redact(tags or {}))
    params = [Param(k, v) for k, v in params_of(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def find_run(tracking_uri: str, experiment: str, run: str):
    """The MLflow run named by id, or by run name within ``experiment`` (the newest if several)."""
    require_store(absolute_uri(tracking_uri))
    client = MlflowClient(absolute_uri(tracking_uri))
    if re.fullmatch(r"[0-9a-f]{32}", run):
        try:
            return client.get_run(run)
        except mlflow.exceptions.MlflowException:
            pass
    exp = client.get_experiment_by_name(experiment)
    found = []
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.run_name = '{run}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not found:
        raise LookupError(
            f"no MLflow run with id or name {run!r} in experiment {experiment!r} at {tracking_uri}"
        )
    return found[0]


def latest_per_step(history) -> list:
    """A metric history with one value per step, the last logged: a run resumed from a
    checkpoint re-logs the steps it rolled back, and the later value is the surviving run's."""
    by_step = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m
    return [by_step[s] for s in sorted(by_step)]


def log_dict(run_id: str, tracking_uri: str, data: dict[str, Any], name: str) -> None:
    """``data`` as a JSON/YAML artifact, credentials redacted (``summary.json``)."""
    MlflowClient(absolute_uri(tracking_uri)).log_dict(run_id, redact_tree(data), name)


def log_text(run_id: str, tracking_uri: str, text: str, name: str) -> None:
    """``text`` as an artifact, credentials in URLs redacted (``config.yaml``)."""
    MlflowClient(absolute_uri(tracking_uri)).log_text(run_id, redact_text(text), name)


def log_artifacts(run_id: str, tracking_uri: str, local_dir: str, path: str) -> None:
    MlflowClient(absolute_uri(tracking_uri)).log_artifacts(run_id, local_dir, path)


def log_encoder(
    run_id: str,
    tracking_uri: str,
    encoder,
    input_example,
    name: str = "encoder",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Log the encoder as an MLflow model that loads without unpickling
    (:mod:`pipelines.tracking.encoder_model`: safetensors weights, this package as its pyfunc
    loader), with its signature (float32 images ``(-1, 3, S, S)`` in [0, 1] -> features
    ``(-1, D)``), input example and ``metadata`` in its ``MLmodel`` (the run's evaluation
    settings: ``pipelines.eval.encoders.logged_metadata``); return its URI."""
    import tempfile

    import torch
    from mlflow.models import infer_signature

    from pipelines.tracking import encoder_model

    with torch.no_grad():
        features = encoder.eval()(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, features)
    requirements = [
        f"{package}=={_version(package)}" for package in ("torch", "safetensors", "sslpipe")
    ]
    mlflow.set_tracking_uri(absolute_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as d, mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=name,
            loader_module=encoder_model.__name__,
            data_path=str(encoder_model.save_encoder(encoder, d)),
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            metadata={"sslpipe_format": encoder_model.FORMAT, **redact_tree(metadata or {})},
        )
    return info.model_uri


def register(
    model_uri: str,
    tracking_uri: str,
    name: str,
    aliases: tuple[str, ...] | list[str] = (),
    knn_top1: float | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """Register ``model_uri`` under ``name``, set ``aliases``, and move ``best`` here when its
    kNN top-1 beats the version holding it (or none does). Returns (``models:/name/version``,
    whether it became ``best``). ``latest`` is MLflow's own: ``models:/name/latest``.

    ``description`` and ``tags`` (:func:`pipelines.tracking.model_card.model_card`) go on the
    version, and on the registered model too when this version is its first or takes
    ``best``: the model's page describes the encoder it serves as ``best``."""
    mlflow.set_tracking_uri(absolute_uri(tracking_uri))
    version = mlflow.register_model(model_uri, name).version
    client = MlflowClient(absolute_uri(tracking_uri))
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    is_best = False
    if knn_top1 is not None:
        client.set_model_version_tag(name, version, "knn_top1", f"{knn_top1:.6f}")
        try:
            holder = client.get_model_version_by_alias(name, "best")
            held = float(holder.tags.get("knn_top1", "nan"))
        except mlflow.exceptions.MlflowException:
            held = float("nan")
        if not held >= knn_top1:  # no holder, an untagged one, or a worse one
            client.set_registered_model_alias(name, "best", version)
            is_best = True
    if description:
        client.update_model_version(name, version, description=description)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    model = client.get_registered_model(name)
    if description and (is_best or not model.description):
        role = "holds `best`, the highest kNN top-1 registered here" if is_best else "the first"
        client.update_registered_model(name, f"Version {version} ({role}):\n\n{description}")
        for key in set(model.tags) & set(CARD_TAGS) - set(tags or {}):  # the previous card's
            client.delete_registered_model_tag(name, key)
        for key, value in (tags or {}).items():
            client.set_registered_model_tag(name, key, value)
    return f"models:/{name}/{version}", is_best


def end_run(run_id: str, tracking_uri: str, status: str = "FINISHED") -> None:
    MlflowClient(absolute_uri(tracking_uri)).set_terminated(run_id, status)


def ui_command(tracking_uri: str) -> str:
    uri = absolute_uri(tracking_uri)
    if is_local_store(uri):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {redact({'uri': uri})['uri']}"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "0+unknown"
