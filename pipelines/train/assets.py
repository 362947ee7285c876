"""Files a method needs before training starts, made by the driver and kept with the run.

``prepare_assets`` runs once in ``sslpipe pretrain`` before the MLflow run starts, so the config
it returns (e.g. with a tokenizer path filled in) is the one logged, trained and evaluated;
``log_assets`` then stores the files as artifacts of the run. A method without an entry in
``PREPARE`` needs nothing.
"""

from collections.abc import Callable

from pipelines.config.schema import Config
from pipelines.train.tokenizer import prepare_tokenizer

#: method key -> (config, training shards, run directory) -> (config, local files to log)
PREPARE: dict[str, Callable[[Config, str, str], tuple[Config, list[str]]]] = {
    "beit": prepare_tokenizer,  # the visual tokenizer BEiT predicts
    "cae": prepare_tokenizer,
}


def prepare_assets(cfg: Config, train_path: str, run_dir: str) -> tuple[Config, list[str]]:
    prepare = PREPARE.get(cfg.method)
    return prepare(cfg, train_path, run_dir) if prepare else (cfg, [])


def log_assets(run_id: str, tracking_uri: str, files: list[str]) -> None:
    """Log each local file under the run's ``assets/`` artifacts."""
    if not files:
        return
    from mlflow import MlflowClient

    from pipelines.tracking.runs import absolute_uri

    client = MlflowClient(absolute_uri(tracking_uri))
    for path in files:
        client.log_artifact(run_id, path, artifact_path="assets")
