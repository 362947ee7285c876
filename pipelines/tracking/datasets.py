"""A run's data as MLflow dataset inputs: each shard set it reads, by path, with the digest of
its manifest and its size, so the UI's Datasets column shows what the run trained and was
evaluated on, and two runs on the same shards show the same digest.

Only the manifest is logged (an MLflow ``MetaDataset``): the images stay where they are.
"""

import hashlib
import json
import warnings

from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipelines.data.manifest import Manifest, read_manifest
from pipelines.tracking.runs import absolute_uri
from pipelines.tracking.secrets import redact_text


def manifest_digest(manifest: Manifest) -> str:
    """The first 16 hex digits of the SHA-256 of the manifest (which holds every file's
    checksum): the same shards give the same digest wherever they are copied."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()[:16]


class ShardSet(MetaDataset):
    """A shard set as an MLflow dataset: its path as source, the manifest's digest, and rows,
    classes, files and bytes as its profile."""

    def __init__(self, path: str, manifest: Manifest) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers the local scheme twice, one class
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(redact_text(path))
        name = "/".join(path.rstrip("/").split("/")[-2:])  # e.g. embedded-v1-600-100/train
        self.manifest = manifest
        super().__init__(source, name=name, digest=manifest_digest(manifest))

    @property
    def profile(self) -> dict[str, int]:
        m = self.manifest
        return {
            "rows": m.total_rows,
            "classes": len(m.class_names),
            "files": len(m.files),
            "bytes": m.total_bytes,
        }

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_datasets(run_id: str, tracking_uri: str, train: str, eval_path: str = "") -> None:
    """Log the training shards (context ``training``) and, when separate, the labeled queries
    (context ``evaluation``) as the run's dataset inputs."""
    inputs = []
    for path, context in ((train, "training"), (eval_path, "evaluation")):
        if path:
            dataset = ShardSet(path, read_manifest(path)[0])
            tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    MlflowClient(absolute_uri(tracking_uri)).log_inputs(run_id, datasets=inputs)
