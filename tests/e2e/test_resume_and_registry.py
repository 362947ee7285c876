"""A stopped run resumed by `pretrain --resume`, then its checkpoints registered, evaluated and
embedded through the CLI."""

import collections
import json

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipelines.train.checkpoint import load_state
from tests.e2e.test_cli import TINY, sslpipe

pytestmark = pytest.mark.e2e


def test_stopped_run_resumes_registers_evaluates_and_embeds(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the data is local, so the endpoint is never used: a credential that must never be written
    endpoint = "--set", "data.s3_endpoint=http://minio:m1n10pw@127.0.0.1:9"
    # 160 images, 2 workers × 16: 5 steps per epoch, 10 in all; checkpoints every 2 steps and
    # at epoch ends; the run dies about to take step index 7 and may not restart
    stop = [
        *TINY,
        *endpoint,
        "--set", "train.name=stopme",
        "--set", "train.log_every_steps=1",
        "--set", "train.checkpoint_every_steps=2",
        "--set", "train.fail_at_step=7",
        "--set", "train.fail_rank=0",
    ]  # fmt: skip
    out = sslpipe("pretrain", *stop, cwd=tmp_path)
    assert out.returncode == 1
    # a few lines, no Ray traceback: what failed, where, and the way on
    report = out.stderr[out.stderr.index("sslpipe pretrain: worker") :]
    assert "Traceback (most recent" not in out.stderr and len(report.splitlines()) <= 8, report
    assert "worker 0 failed" in out.stderr and "/stopme/checkpoint_000000006" in out.stderr
    assert "resume with: sslpipe pretrain --resume stopme" in out.stderr
    assert "--set train.max_failures=3" in out.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs(["1"], filter_string="attributes.run_name = 'stopme'")
    assert run.info.status == "FAILED"

    again = sslpipe("pretrain", *stop, cwd=tmp_path)  # a fresh run may not take its name
    assert again.returncode == 2 and "--resume stopme" in again.stderr
    # the redacted endpoint must come again from the command line
    out = sslpipe("pretrain", "--resume", "stopme", cwd=tmp_path)
    assert out.returncode == 2 and "data.s3_endpoint" in out.stderr
    out = sslpipe(
        "pretrain", "--resume", "stopme", *endpoint, "--summary-json", "s.json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["run_id"] == run.info.run_id  # one MLflow run per pretraining
    assert summary["steps"] == 10
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    (resumed,) = client.get_metric_history(run.info.run_id, "resumed_from_step")
    # the checkpoint of step 6 is reported one step before the kill; Ray's controller may not
    # have registered it yet, and then the run resumes from the one before (step 5)
    assert resumed.value in (5.0, 6.0) and resumed.step == resumed.value
    counts = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert sorted(counts) == list(range(1, 11))
    assert {s for s, n in counts.items() if n > 1} <= set(range(int(resumed.value) + 1, 8))

    # no credential in what the run wrote: artifacts, checkpoint state, summary
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert [p for p in written if b"m1n10pw" in p.read_bytes()] == []
    state = load_state(tmp_path / "sslpipe-runs" / "stopme" / "checkpoint_000000010")
    assert state["config"]["data"]["s3_endpoint"] == "http://minio:***@127.0.0.1:9"

    # every checkpoint recorded; those Ray Train pruned (train.keep_checkpoints=2) say so
    records = [json.loads(v) for k, v in run.data.tags.items() if "checkpoint." in k]
    assert sorted(r["step"] for r in records) == [2, 4, 5, 6, 8, 10]
    kept = sorted(r["step"] for r in records if not r.get("pruned"))
    run_dir = tmp_path / "sslpipe-runs" / "stopme"
    on_disk = sorted(int(p.name[-9:]) for p in run_dir.glob("checkpoint_0*"))
    assert kept == on_disk == [8, 10]

    # the registry's side runs with pickle disabled, as a careful user's machine would
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    gone = sslpipe("register", run.info.run_id, "--step", "2", cwd=tmp_path)
    assert gone.returncode == 1 and "is gone: pruned" in gone.stderr
    out = sslpipe("register", run.info.run_id, "--step", "8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["registered"] == "models:/sslpipe-simclr/2"

    # the registered best encoder, evaluated as pretrain did, gives pretrain's figure
    data = tmp_path / "sslpipe-data" / "embedded-v1-16-4"
    common = ["--data", str(data / "train"), "--set", "eval.crop_fraction=1.0"]
    out = sslpipe(
        "eval", "knn", "--model", "models:/sslpipe-simclr@best", *common,
        "--eval-data", str(data / "test"), "--set", "eval.knn_k=20", "--summary-json", "k.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    knn = json.loads((tmp_path / "k.json").read_text())
    assert knn["top1"] == pytest.approx(summary["metrics"]["knn_top1"], abs=1e-6)
    assert (knn["train_rows"], knn["test_rows"]) == (160, 40)

    out = sslpipe(
        "eval", "linear", "--model", "models:/sslpipe-simclr/2", *common,
        "--set", "eval.linear_epochs=5", "--summary-json", "l.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    linear = json.loads((tmp_path / "l.json").read_text())
    assert 0.0 <= linear["top1"] <= 1.0 and linear["train_rows"] + linear["test_rows"] == 160

    out = sslpipe(
        "embed", "--model", "models:/sslpipe-simclr@best", "--data", str(data / "test"),
        "--out", "emb.parquet", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column_names == ["key", "label", "embedding"] and table.num_rows == 40
    assert len(set(table.column("key").to_pylist())) == 40
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
    assert len(table.column("embedding")[0]) == 64  # width-0.125 ResNet-18
