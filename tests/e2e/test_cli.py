"""The CLI end to end on the embedded default, with a tiny budget."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

TINY = [
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--set",
    "backbone.width=0.125",
    "--set",
    "method_args.proj_hidden_dim=64",
    "--set",
    "data.embedded_train_per_class=16",
    "--set",
    "data.embedded_test_per_class=4",
    "--set",
    "eval.knn_k=20",
]


def sslpipe(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_methods_lists_the_registry(tmp_path):
    out = sslpipe("methods", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.split()[0] == "simclr"


def test_bad_override_names_the_key(tmp_path):
    out = sslpipe("pretrain", "--set", "optim.nme=sgd", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown config key 'optim.nme'" in out.stderr and "base_lr" in out.stderr


def test_pretrain_on_the_embedded_default(tmp_path):
    out = sslpipe("pretrain", *TINY, "--summary-json", "summary.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kNN top-1" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("run_id", "tracking_uri", "model_uri", "checkpoint"):
        assert summary[key], key
    m = summary["metrics"]
    assert 0.0 <= m["knn_top1"] <= 1.0 and 0.0 <= m["knn_top1_random_init"] <= 1.0
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "sslpipe-runs").is_dir()

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "simclr" and run.data.params["train.epochs"] == "2"
    assert run.data.metrics["knn_top1"] == pytest.approx(m["knn_top1"])
    losses = client.get_metric_history(summary["run_id"], "epoch_loss")
    assert len(losses) == 2 and all(np.isfinite(x.value) for x in losses)
    assert client.get_metric_history(summary["run_id"], "images_per_sec")

    versions = client.search_model_versions("name='sslpipe-simclr'")
    assert len(versions) == 1 and summary["registered_model_uri"] == "models:/sslpipe-simclr/1"
    mlflow.set_tracking_uri(summary["tracking_uri"])
    encoder = mlflow.pyfunc.load_model(summary["registered_model_uri"]).get_raw_model()
    import torch

    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 32, 32))
    assert features.shape == (1, encoder.out_dim) and torch.isfinite(features).all()

    # the run's shard sets as its dataset inputs; the registry says what the encoder is
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["evaluation", "training"]
    assert inputs["training"].digest == run.data.tags["sslpipe.data_manifest_sha256"]
    version = client.get_model_version("sslpipe-simclr", "1")
    assert version.tags["method"] == "simclr" and version.tags["epochs"] == "2"
    assert "(Chen et al., ICML 2020; contrastive), trained 2 epochs" in version.description

    # evaluated with no --data and no --set, the registered encoder reads back the run's figure
    out = sslpipe(
        "eval", "knn", "--model", "models:/sslpipe-simclr@best", "--summary-json", "k.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "k.json").read_text())["top1"] == m["knn_top1"]
