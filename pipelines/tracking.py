"""MLflow: runs, params, metrics from rank 0, the encoder as a model, the registry."""

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.config import Config, flatten, to_dict

log = logging.getLogger(__name__)


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def absolute_uri(uri: str) -> str:
    """Make a relative SQLite URI absolute, so Ray workers in other directories find it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


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
    """The flattened config as MLflow params (values stringified, long ones truncated)."""
    flat = flatten(to_dict(cfg))
    return {k: str(v)[:6000] for k, v in flat.items()}


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create the run of one pretraining, log its params; return the run id."""
    uri = absolute_uri(cfg.tracking.uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, uri, cfg.tracking.experiment)
    run = client.create_run(exp, run_name=run_name, tags=tags or {})
    params = [mlflow.entities.Param(k, v) for k, v in params_of(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


class MetricLogger:
    """Buffered metrics for one run; a failed flush keeps the buffer and retries later."""

    def __init__(self, tracking_uri: str, run_id: str, max_buffer: int = 100_000) -> None:
        self.client = MlflowClient(absolute_uri(tracking_uri))
        self.run_id = run_id
        self.buffer: list[Metric] = []
        self.max_buffer = max_buffer

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> bool:
        while self.buffer:
            chunk = self.buffer[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as e:  # the tracking server may be briefly unreachable
                log.warning("MLflow unreachable (%s); keeping %d metrics", e, len(self.buffer))
                self.buffer = self.buffer[-self.max_buffer :]
                return False
            self.buffer = self.buffer[len(chunk) :]
        return True


def log_dict(run_id: str, tracking_uri: str, data: dict[str, Any], name: str) -> None:
    MlflowClient(absolute_uri(tracking_uri)).log_dict(run_id, data, name)


def log_encoder(
    run_id: str, tracking_uri: str, encoder, input_example, name: str = "encoder"
) -> str:
    """Log the encoder as an MLflow PyTorch model in the run; return its model URI."""
    mlflow.set_tracking_uri(absolute_uri(tracking_uri))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            encoder,
            name=name,
            serialization_format="pickle",  # loads back as our own class, not a GraphModule
            input_example=input_example,
            pip_requirements=[f"torch=={_version('torch')}", f"sslpipe=={_version('sslpipe')}"],
        )
    return info.model_uri


def register(model_uri: str, tracking_uri: str, name: str, aliases: list[str]) -> str:
    """Register ``model_uri`` under ``name``; set aliases; return ``models:/name/version``."""
    mlflow.set_tracking_uri(absolute_uri(tracking_uri))
    version = mlflow.register_model(model_uri, name).version
    client = MlflowClient(absolute_uri(tracking_uri))
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return f"models:/{name}/{version}"


def end_run(run_id: str, tracking_uri: str, status: str = "FINISHED") -> None:
    MlflowClient(absolute_uri(tracking_uri)).set_terminated(run_id, status)


def ui_command(tracking_uri: str) -> str:
    uri = absolute_uri(tracking_uri)
    if is_local_store(uri):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri}"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "0+unknown"
