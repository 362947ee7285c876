"""MLflow side: redaction, buffered metrics that survive an unreachable server, checkpoint
records, one value per step after a resume, and the `best` alias."""

import threading
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.config.layers import load_config, parse_set
from pipelines.tracking import runs as tracking
from pipelines.tracking.metric_logger import MetricLogger
from pipelines.tracking.runs import (
    checkpoint_tags,
    checkpoints_of,
    latest_per_step,
    redact,
)


def test_credentials_are_redacted_from_params_and_tags():
    out = redact(
        {
            "storage.aws_secret_access_key": "abc",
            "AWS_ACCESS_KEY_ID": "AKIA123",
            "tracking.api_token": "t0k",
            "db.password": "hunter2",
            "hf_TOKEN": "x",
            "tracking.uri": "https://alice:s3cret@mlflow.example.com/",
            "train.epochs": 3,
            "train.name": "simclr-tokenizer",  # the value is harmless; only keys are judged
        }
    )
    for key in ("storage.aws_secret_access_key", "AWS_ACCESS_KEY_ID", "tracking.api_token"):
        assert out[key] == "***", key
    assert out["db.password"] == "***" and out["hf_TOKEN"] == "***"
    assert out["tracking.uri"] == "https://alice:***@mlflow.example.com/"
    assert out["train.epochs"] == "3" and out["train.name"] == "simclr-tokenizer"
    assert "s3cret" not in str(out) and "hunter2" not in str(out)


def test_params_of_a_config_with_a_credentialed_uri():
    cfg = load_config(overrides=parse_set(["tracking.uri=http://bob:pw@localhost:5000"]))
    params = tracking.params_of(cfg)
    assert params["tracking.uri"] == "http://bob:***@localhost:5000"
    assert params["train.epochs"] == "8"


class FlakyClient:
    """Fails the first ``failures`` log_batch calls, then records what it is sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.metrics: list[Metric] = []
        self.tags: dict[str, str] = {}
        self.calls = 0

    def log_batch(self, run_id, metrics=(), tags=()):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection refused")
        self.metrics += list(metrics)
        self.tags.update({t.key: t.value for t in tags})


def logger_with(client: FlakyClient, background: bool = False, **kw) -> MetricLogger:
    return MetricLogger("unused", "run", background=background, client=client, **kw)


def test_metrics_are_kept_while_the_server_is_down_and_sent_later():
    client = FlakyClient(failures=3)
    log = logger_with(client)
    for step in range(1, 4):
        log.log({"loss": 1.0 / step}, step)
        assert not log._send_all()  # what the thread does; fails quietly while the server is down
    assert client.metrics == [] and [p[3] for p in log.pending()] == [1, 2, 3]
    for step in range(4, 6):
        log.log({"loss": 1.0 / step}, step)
    assert log.flush(timeout=10)
    assert [m.step for m in client.metrics] == [1, 2, 3, 4, 5]
    assert log.pending() == []


def test_pending_up_to_a_step_and_requeue_keep_timestamps():
    log = logger_with(FlakyClient(failures=100))
    log.log({"loss": 0.5}, 3, timestamp_ms=111)
    log.log({"loss": 0.4}, 7, timestamp_ms=222)
    assert log.pending(max_step=5) == [["loss", 0.5, 111, 3]]
    other = logger_with(FlakyClient(failures=0))
    other.requeue(log.pending(max_step=5))
    assert other.flush(timeout=5)
    (m,) = other.client.metrics
    assert (m.key, m.value, m.timestamp, m.step) == ("loss", 0.5, 111, 3)


def test_background_flush_waits_at_most_its_timeout():
    client = FlakyClient(failures=10**6)
    log = logger_with(client, background=True, flush_seconds=0.05)
    log.log({"loss": 1.0}, 1)
    done = threading.Event()
    result = []
    threading.Thread(target=lambda: (result.append(log.flush(timeout=0.2)), done.set())).start()
    assert done.wait(30), "flush blocked past its timeout"
    assert result == [False] and len(log.pending()) == 1
    client.failures = 0  # the server is back: the thread sends it
    assert log.close(timeout=30)
    assert [m.step for m in client.metrics] == [1]


def test_latest_per_step_keeps_the_surviving_value():
    history = [
        Metric("loss", 3.0, 100, 3),
        Metric("loss", 1.0, 50, 1),
        Metric("loss", 2.0, 60, 2),
        Metric("loss", 2.5, 300, 3),  # re-logged after a resume: later timestamp wins
    ]
    assert [(m.step, m.value) for m in latest_per_step(history)] == [(1, 1.0), (2, 2.0), (3, 2.5)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'm.db'}"


def test_checkpoint_records_round_trip_through_a_run(store):
    uri = store
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    log = MetricLogger(uri, run_id)
    log.set_tags(checkpoint_tags("s3://b/runs/r/checkpoint_000000020", 20, 1))
    log.set_tags(checkpoint_tags("/runs/r/checkpoint_000000010", 10, 0))
    assert log.flush(timeout=30)
    records = checkpoints_of(client.get_run(run_id))
    assert records == [
        {"uri": "/runs/r/checkpoint_000000010", "step": 10, "epoch": 0},
        {"uri": "s3://b/runs/r/checkpoint_000000020", "step": 20, "epoch": 1},
    ]


def test_best_alias_follows_knn_and_latest_is_refused(store, monkeypatch):
    uri = store
    monkeypatch.setattr(tracking.mlflow, "register_model", _fake_register(uri))
    _, best1 = tracking.register("file:///m1", uri, "enc", ("candidate",), knn_top1=0.30)
    v2, best2 = tracking.register("file:///m2", uri, "enc", (), knn_top1=0.25)
    _, best3 = tracking.register("file:///m3", uri, "enc", (), knn_top1=0.40)
    assert (best1, best2, best3) == (True, False, True)
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("enc", "best").version) == "3"
    assert str(client.get_model_version_by_alias("enc", "candidate").version) == "1"
    assert v2 == "models:/enc/2"
    with pytest.raises(Exception, match="latest"):
        client.set_registered_model_alias("enc", "latest", "1")  # why we never set it


def _fake_register(uri: str):
    """mlflow.register_model for a bare source URI, without logging a model first."""

    def register(model_uri: str, name: str):
        client = MlflowClient(uri)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        return SimpleNamespace(version=client.create_model_version(name, model_uri).version)

    return register


def test_checkpoint_tags_list_what_storage_keeps_across_a_resume(store, tmp_path):
    from pipelines.eval.encoders import register_checkpoint
    from pipelines.tracking.checkpoint_records import CheckpointRecords

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("pruning")).info.run_id

    def worker() -> MetricLogger:  # a train worker starting (or restarting after a failure)
        return MetricLogger(store, run_id, checkpoints=CheckpointRecords(str(run_dir), keep=2))

    def report(log: MetricLogger, step: int, epoch: int) -> None:
        """Rank 0 writes and records a checkpoint; Ray Train then deletes all but the latest
        two (train.keep_checkpoints=2)."""
        (run_dir / f"checkpoint_{step:09d}").mkdir()
        log.record_checkpoint(f"{run_dir}/checkpoint_{step:09d}", step, epoch)
        for old in sorted(run_dir.iterdir())[:-2]:
            old.rmdir()

    first = worker()
    for step, epoch in ((2, 0), (4, 1), (5, 1)):
        report(first, step, epoch)
    assert first.flush(timeout=30)
    second = worker()  # the run died after step 5 and resumed from its checkpoint
    for step, epoch in ((6, 2), (8, 3)):
        report(second, step, epoch)
    assert second.flush(timeout=30)

    records = checkpoints_of(client.get_run(run_id))
    on_disk = sorted(int(p.name.split("_")[1]) for p in run_dir.iterdir())
    assert [r["step"] for r in records if not r.get("pruned")] == on_disk == [6, 8]
    assert [r["step"] for r in records] == [2, 4, 5, 6, 8]
    assert records[0] == {
        "uri": f"{run_dir}/checkpoint_000000002",
        "step": 2,
        "epoch": 0,
        "pruned": True,
    }
    with pytest.raises(FileNotFoundError, match=r"step 4 is gone: pruned .* keeps steps: 6, 8"):
        register_checkpoint(run_id, 4, store, "pruning")
    with pytest.raises(LookupError, match=r"no checkpoint at step 7; it keeps: 6, 8"):
        register_checkpoint(run_id, 7, store, "pruning")


def test_registering_a_checkpoint_deleted_from_storage_says_it_was_pruned(store, tmp_path):
    """A record written before pruning was tracked, whose checkpoint is gone since."""
    from pipelines.eval.encoders import register_checkpoint

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    for step in (2, 4):
        for key, value in checkpoint_tags(f"{tmp_path}/checkpoint_{step:09d}", step, 0).items():
            client.set_tag(run_id, key, value)
    with pytest.raises(FileNotFoundError, match=r"step 2 is gone: pruned from .*latest"):
        register_checkpoint(run_id, 2, store, "gone")


def test_the_driver_marks_what_a_killed_worker_could_not(store, tmp_path):
    from pipelines.tracking.checkpoint_records import mark_pruned

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("killed")).info.run_id
    for step in (3, 6, 9):
        uri = f"{tmp_path}/checkpoint_{step:09d}"
        if step > 3:
            (tmp_path / f"checkpoint_{step:09d}").mkdir()
        for key, value in checkpoint_tags(uri, step, step // 3).items():
            client.set_tag(run_id, key, value)
    assert mark_pruned(run_id, store) == [3]
    records = checkpoints_of(client.get_run(run_id))
    assert [(r["step"], r.get("pruned", False)) for r in records] == [
        (3, True),
        (6, False),
        (9, False),
    ]
    assert mark_pruned(run_id, store) == []  # nothing left to mark


def test_the_registry_describes_each_encoder_and_its_best(store, monkeypatch):
    from pipelines.tracking.model_card import model_card

    client = MlflowClient(store)
    tags = {"sslpipe.data": "/shards/train", "sslpipe.data_manifest_sha256": "0123456789abcdef"}
    run = client.create_run(client.create_experiment("cards"), run_name="byol-1", tags=tags)
    cfg = load_config("byol", overrides=parse_set(["eval.knn_k=20", "data.path=/shards/train"]))
    metrics = {"knn_top1": 0.143, "knn_top1_random_init": 0.101}
    text, card = model_card(cfg, run, 8, metrics, "bank /shards/train, queries /shards/test")
    assert text.startswith(
        "**byol** encoder (Grill et al., NeurIPS 2020; self-distillation), trained 8 epochs on "
        "`/shards/train` (manifest sha256 `0123456789abcdef`)."
    )
    assert (
        "kNN top-1 **0.143**, against 0.101 for the same architecture at random "
        "initialisation (weighted kNN, k=20, T=0.1, crop fraction 0.875; bank /shards/train, "
        "queries /shards/test)."
    ) in text
    assert card == {
        "method": "byol",
        "family": "self-distillation",
        "data": "/shards/train",
        "data_manifest_sha256": "0123456789abcdef",
        "epochs": "8",
        "knn_top1": "0.143000",
        "knn_top1_random_init": "0.101000",
    }

    monkeypatch.setattr(tracking.mlflow, "register_model", _fake_register(store))
    tracking.register("file:///c1", store, "card", (), 0.143, text, card)
    worse, worse_card = model_card(cfg, run, 4, {"knn_top1": 0.12})
    tracking.register("file:///c2", store, "card", (), 0.12, worse, worse_card)
    model = client.get_registered_model("card")
    assert (
        model.description
        == f"Version 1 (holds `best`, the highest kNN top-1 registered here):\n\n{text}"
    )
    assert model.tags == card
    version = client.get_model_version("card", "2")
    assert version.description == worse and version.tags == worse_card
    assert "random init" not in worse and "against" not in worse

    better, better_card = model_card(cfg, run, 16, {"knn_top1": 0.2})
    tracking.register("file:///c3", store, "card", (), 0.2, better, better_card)
    model = client.get_registered_model("card")
    assert model.description.startswith("Version 3 (holds `best`")
    assert model.tags == better_card  # version 1's random-init tag went with its card


def test_the_run_logs_its_shard_sets_as_dataset_inputs(store, tmp_path):
    import json

    from pipelines.data.manifest import read_manifest
    from pipelines.tracking.datasets import log_datasets, manifest_digest
    from tests.unit.pipelines.eval.test_frozen_eval import colour_shards

    colour_shards(tmp_path / "run" / "train", 40)
    colour_shards(tmp_path / "run" / "test", 10, first=40)
    train, test = str(tmp_path / "run" / "train"), str(tmp_path / "run" / "test")
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("inputs")).info.run_id
    log_datasets(run_id, store, train, test)

    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(by_context) == ["evaluation", "training"]
    logged = by_context["training"]
    assert logged.name == "run/train"
    assert logged.digest == manifest_digest(read_manifest(train)[0])
    assert json.loads(logged.source) == {"uri": train}
    manifest = read_manifest(train)[0]
    assert json.loads(logged.profile) == {
        "rows": 40,
        "classes": 3,
        "files": 3,  # 16 rows a file
        "bytes": manifest.total_bytes,
    }
    assert json.loads(by_context["evaluation"].profile)["rows"] == 10
    assert by_context["evaluation"].digest != logged.digest


def test_system_metrics_without_psutil_log_nothing_and_say_nothing(store, monkeypatch, capsys):
    import sys

    from pipelines.tracking.system_metrics import system_metrics

    monkeypatch.setitem(sys.modules, "psutil", None)  # as where psutil is not installed
    for name in [m for m in sys.modules if m.startswith("mlflow.system_metrics")]:
        monkeypatch.delitem(sys.modules, name)
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("no-psutil")).info.run_id
    capsys.readouterr()  # MLflow's notices of a new store
    with system_metrics(run_id, store) as sampling:
        assert sampling is False
    assert client.get_run(run_id).data.metrics == {}
    assert capsys.readouterr() == ("", "")


def test_system_metrics_sample_the_machine_while_the_run_trains(store, monkeypatch):
    import time

    pytest.importorskip("psutil")
    from pipelines.tracking.system_metrics import system_metrics

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("psutil")).info.run_id
    with system_metrics(run_id, store) as sampling:
        assert sampling is True
        time.sleep(1.5)
    assert "system/cpu_utilization_percentage" in client.get_run(run_id).data.metrics


def test_rank_zero_pays_for_mlflow_at_its_first_send_not_before(tmp_path):
    """Making a MetricLogger and buffering metrics imports no MLflow; the background thread's
    first send imports it and makes the client, and the values arrive."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)  # the driver made the store and the run
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    code = (
        "import sys\n"
        "import pipelines.tracking.metric_logger as m\n"
        f"log = m.MetricLogger({uri!r}, {run_id!r}, flush_seconds=60, background=True)\n"
        "log.log({'loss': 2.5}, 1)\n"
        "print(any(k.split('.')[0] == 'mlflow' for k in sys.modules), log.client)\n"
        "assert log.close(timeout=60)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "None"]
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.5]


def test_a_store_opened_in_the_background_raises_where_it_is_awaited():
    opening = tracking.open_store("nosuch://host/x")
    with pytest.raises(Exception, match="nosuch://host/x"):
        opening.result()
