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


NOISE = ("TrainingReport", "Execution plan", "WARNING", "\x1b", "Traceback")


def test_pretrain_output_to_a_file_is_sslpipe_alone(tmp_path):
    """Off a terminal: phases, plain progress lines and the summary; none of Ray's or MLflow's
    own logging (it is in the run's log file), no control codes."""
    out = sslpipe("pretrain", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for noise in NOISE:
        assert noise not in text, noise
    assert "\r" not in text
    lines = out.stdout.splitlines()
    assert any(line.startswith("sslpipe: epoch 2/2  step") for line in lines)
    (log_line,) = [line for line in lines if line.startswith("sslpipe: log: ")]
    log_file = log_line.removeprefix("sslpipe: log: ")
    with open(log_file) as f:
        assert "mlflow" in f.read()  # what the console did not show is kept there


def test_python_api_trains_and_returns_the_summary(tmp_path):
    code = (
        "from pipelines import load_config, pretrain\n"
        "from pipelines.config.layers import parse_set\n"
        "cfg = load_config('simclr', overrides={'train': {'epochs': 1, 'batch_size': 32}, "
        "**parse_set(['backbone.width=0.125', 'method_args.proj_hidden_dim=64', "
        "'data.embedded_train_per_class=16', 'data.embedded_test_per_class=4', "
        "'eval.knn_k=20'])})\n"
        "s = pretrain(cfg)\n"
        "print('SUMMARY', s['registered_model_uri'], s['metrics']['knn_top1'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("SUMMARY")]
    _, uri, knn = line.split()
    assert uri == "models:/sslpipe-simclr/1" and 0.0 <= float(knn) <= 1.0
