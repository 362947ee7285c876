"""Credentials stay out of params, artifacts, job summaries and resumed configs; harmless keys
stay readable."""

import argparse
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.config.layers import dump_yaml, load_config, parse_set
from pipelines.config.typed import ConfigError
from pipelines.tracking import runs as tracking


@pytest.mark.parametrize(
    "text, expected",
    [
        # token-only userinfo: the one word before '@' may be the token itself
        ("https://ghp_T0KEN@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        # a password holding '@': the host starts after the last one
        ("postgresql://mlflow:p@ss@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("https://alice:s3cret@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
        # signed URLs: S3 presigned, Azure SAS, a plain token parameter
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&x=1",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1",
        ),
        ("https://acct.blob.core.windows.net/c?sv=2022&sig=Zm9v%3D", None),
        ("http://mlflow:5000/?token=abc#frag", "http://mlflow:5000/?token=***#frag"),
        # nothing to hide
        ("sqlite:////mnt/shared/mlflow.db", "sqlite:////mnt/shared/mlflow.db"),
        ("s3://bucket/runs/simclr@v1", "s3://bucket/runs/simclr@v1"),
        ("models:/sslpipe-simclr@best", "models:/sslpipe-simclr@best"),
        ("http://head:8265", "http://head:8265"),
    ],
)
def test_credentials_in_text_are_redacted(text, expected):
    if expected is None:  # the SAS case: sv stays, sig goes
        expected = "https://acct.blob.core.windows.net/c?sv=2022&sig=***"
    assert tracking.redact({"train.storage": text})["train.storage"] == expected


def test_harmless_keys_that_contain_secret_words_stay_readable():
    params = tracking.params_of(load_config("beit"))
    tokenizer = {k: v for k, v in params.items() if k.startswith("method_args.tokenizer.")}
    assert tokenizer and all(v != "***" for v in tokenizer.values()), tokenizer
    assert params["method_args.tokenizer.codebook_size"] == "512"
    # while keys that name a credential still lose their values
    out = tracking.redact({"hf_TOKEN": "x", "apiKey": "k", "aws_session_token": "s", "n": 3})
    assert out == {"hf_TOKEN": "***", "apiKey": "***", "aws_session_token": "***", "n": "3"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store and its directory: creating the schema takes seconds."""
    root = tmp_path_factory.mktemp("store")
    return root, f"sqlite:///{root / 'mlflow.db'}"


def credentialed_config(*pairs: str):
    return load_config(
        overrides=parse_set(
            ["tracking.uri=https://bob:hunter2@mlflow.example.com", *pairs],
        )
    )


def test_config_and_summary_artifacts_hold_no_credentials(store):
    _, uri = store
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.experiment_id(client, uri, "s")).info.run_id
    cfg = credentialed_config("data.s3_endpoint=http://minio:m1n10pw@minio:9000")
    # what the driver logs at a run's start and end
    tracking.log_text(run_id, uri, dump_yaml(cfg), "config.yaml")
    summary = {"tracking_uri": cfg.tracking.uri, "checkpoint": "s3://b/r?X-Amz-Signature=f00"}
    tracking.log_dict(run_id, uri, summary, "summary.json")
    text = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    assert "hunter2" not in text and "m1n10pw" not in text
    assert "uri: https://bob:***@mlflow.example.com" in text
    logged = json.loads(Path(client.download_artifacts(run_id, "summary.json")).read_text())
    assert logged == {
        "tracking_uri": "https://bob:***@mlflow.example.com",
        "checkpoint": "s3://b/r?X-Amz-Signature=***",
    }


def _stopped_run(uri: str, cfg) -> str:
    """A run as ``sslpipe pretrain`` leaves it: its config logged as ``config.yaml``."""
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.experiment_id(client, uri, "sslpipe")).info.run_id
    tracking.log_text(run_id, uri, dump_yaml(cfg), "config.yaml")
    return run_id


def test_a_resumed_run_uses_the_live_tracking_uri(store, monkeypatch):
    from pipelines.cli.pretrain import resume_config

    root, uri = store
    monkeypatch.chdir(root)  # the default tracking URI, sqlite:///mlflow.db, is this store
    run_id = _stopped_run(uri, credentialed_config("train.epochs=3"))
    args = argparse.Namespace(resume=run_id, method=None)
    cfg, resumed = resume_config(args, {"train": {"epochs": 5}})
    assert resumed == run_id
    assert cfg.tracking.uri == uri  # the store the run was found in, not the artifact's
    assert cfg.train.epochs == 5


def test_a_resumed_run_asks_again_for_other_redacted_values(store, monkeypatch):
    from pipelines.cli.pretrain import resume_config

    root, uri = store
    monkeypatch.chdir(root)
    endpoint = "http://minio:m1n10pw@minio:9000"
    run_id = _stopped_run(uri, credentialed_config(f"data.s3_endpoint={endpoint}"))
    args = argparse.Namespace(resume=run_id, method=None)
    with pytest.raises(ConfigError, match=r"data\.s3_endpoint: give them again"):
        resume_config(args, {})
    cfg, _ = resume_config(args, {"data": {"s3_endpoint": endpoint}})
    assert cfg.data.s3_endpoint == endpoint


def test_a_jobs_summary_line_is_redacted(monkeypatch, capsys):
    from pipelines.cluster import jobs

    monkeypatch.setenv(jobs.IN_JOB_ENV, "1")
    jobs.emit_summary({"model_uri": "runs:/x/encoder", "checkpoint": "https://h/c?sig=c0ffee"})
    line = capsys.readouterr().out.strip()
    assert line.startswith(jobs.SUMMARY_MARKER) and "c0ffee" not in line
    assert json.loads(line[len(jobs.SUMMARY_MARKER) :])["checkpoint"] == "https://h/c?sig=***"
