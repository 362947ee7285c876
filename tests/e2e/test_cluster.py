"""A multi-node Ray on this machine (``ray start`` head + worker nodes with their own temp dir and
ports): placement by custom resources, a job through the Jobs API, a lost node survived.

The head advertises ``data`` (decoding) and the worker nodes ``train`` (one train worker each),
as the launcher's cpu_data and gpu_train groups do (infra/cluster/aws.yaml). The CLI runs in a
subprocess, so this test process never joins the cluster (nor leaves another session's Ray).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.e2e

PLACEMENT = {
    "data": {"task_resources": {"data": 0.01}},
    "train": {"worker_resources": {"train": 1}},
    # the final kNN's views by Ray tasks too: a set this small is otherwise decoded in the driver
    "eval": {"in_process_rows": 0},
}


def tiny(tmp_path: Path, epochs: int = 2) -> list[str]:
    """The smallest real pretraining: embedded data, 1 worker, batch 64, width 0.25."""
    return [
        "--epochs",
        str(epochs),
        "--batch-size",
        "64",
        "--workers",
        "1",
        "--storage",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set",
        "data.embedded_train_per_class=16",
        "--set",
        "data.embedded_test_per_class=4",
        "--set",
        f"data.cache_dir={tmp_path / 'data'}",
        "--set",
        "eval.knn_k=20",
        "--set",
        "eval.knn_random_init=false",
        "--set",
        "tracking.register=false",
    ]


def placement_file(tmp_path: Path) -> str:
    path = tmp_path / "placement.yaml"
    path.write_text(json.dumps(PLACEMENT))  # JSON is YAML
    return str(path)


def sslpipe(cluster: LocalCluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process's state API calls, as c.env()
    try:
        c.start_head(num_cpus=2, resources={"data": 4})
        c.add_node(num_cpus=1, resources={"train": 1})
        yield c
    finally:
        c.stop()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def actors(cluster: LocalCluster, class_name: str) -> list:
    from ray.util.state import list_actors

    found = list_actors(address=cluster.dashboard, limit=10000, raise_on_missing_output=False)
    return [a for a in found if a.class_name == class_name]


def test_data_tasks_and_train_workers_land_on_their_nodes(cluster, tmp_path):
    from ray.util.state import list_tasks

    head, train = cluster.nodes[0], cluster.nodes[1]
    out = sslpipe(
        cluster,
        "pretrain",
        "--address",
        cluster.gcs_address,  # a driver here, connected to the cluster
        "--config",
        placement_file(tmp_path),
        *tiny(tmp_path),
        "--summary-json",
        str(tmp_path / "summary.json"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4  # 160 images // 64 = 2 steps × 2 epochs

    tasks = list_tasks(address=cluster.dashboard, limit=10000, raise_on_missing_output=False)
    data_tasks = [t for t in tasks if "MapBatches(" in t.name]
    # reading, decoding/cropping and the kNN evaluation's views all ran, all on the data node
    for fn in ("read_parquet_files", "make_views", "_eval_views"):
        assert any(fn in t.name for t in data_tasks), fn
    assert {t.node_id for t in data_tasks} == {head.node_id}
    workers = actors(cluster, "RayTrainWorker")
    assert workers and {a.node_id for a in workers} == {train.node_id}


def test_a_ray_client_driver_trains_and_summarises(cluster, tmp_path):
    out = sslpipe(
        cluster,
        "pretrain",
        "--address",
        cluster.client_address,  # Ray Client: this process drives, the cluster runs the work
        *tiny(tmp_path, epochs=1),
        "--set",
        "train.worker_resources={train: 1}",
        "--summary-json",
        str(tmp_path / "summary.json"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["metrics"]["knn_top1"] <= 1.0


def test_a_job_submitted_through_the_jobs_api_finishes_with_a_summary(cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    summary_path = tmp_path / "summary.json"
    out = sslpipe(
        cluster,
        "pretrain",
        "--address",
        cluster.dashboard,
        "--config",  # a file on this machine: it travels inlined into the job's command line
        placement_file(tmp_path),
        *tiny(tmp_path),
        "--summary-json",
        str(summary_path),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sslpipe: submitted job sslpipe-pretrain-" in out.stdout
    assert "sslpipe pretrain: done" in out.stdout  # the job's log, streamed here
    assert "SSLPIPE_SUMMARY_JSON" not in out.stdout  # the marker line is consumed
    summary = json.loads(summary_path.read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["metrics"]["knn_top1"] <= 1.0
    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.worker_resources.train"] == "1.0"

    jobs = JobSubmissionClient(cluster.dashboard).list_jobs()
    (job,) = [j for j in jobs if j.entrypoint.startswith("python -m pipelines.cli pretrain")]
    assert job.status == JobStatus.SUCCEEDED
    assert "--address" not in job.entrypoint and "--summary-json" not in job.entrypoint


@pytest.mark.parametrize("address", ["dashboard", "gcs_address"])
def test_a_cluster_without_the_asked_resources_is_refused_before_anything_runs(
    cluster, tmp_path, address
):
    # two train workers of {train: 1}: the cluster has one train slot
    out = sslpipe(
        cluster,
        "pretrain",
        "--address",
        getattr(cluster, address),
        "--config",
        placement_file(tmp_path),
        *tiny(tmp_path),
        "--workers",
        "2",
        timeout=60,
    )
    assert out.returncode == 1
    assert "can hold 1 of the 2 train worker(s) of {CPU: 1, train: 1}" in out.stderr
    assert "submitted job" not in out.stdout
    assert not (tmp_path / "runs").exists()


def registered_step(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered (its snapshot in
    the run directory), 0 while none. A checkpoint on disk is not yet one to resume from: the
    controller takes reports from the workers when it polls them (every 2 s by default)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("step", 0))


def test_losing_the_train_node_resumes_from_the_checkpoint_on_the_remaining_one(cluster, tmp_path):
    """Why this can survive: what must outlive a worker node sits on the head (the driver, Ray
    Train's controller and dataset coordinator, which Ray pins to the driver's node; the
    bad-image counter, pinned there by us; the data tasks, by their ``data`` resource), the
    checkpoints are in storage every node reaches, and ``train`` is advertised by more than one
    node, so the restarted worker group has somewhere to go.

    The node is killed, not stopped: SIGTERM to ``ray start`` drains the node, and the worker
    went on to the end of this short run before the drain deadline, proving nothing."""
    spare = cluster.add_node(num_cpus=1, resources={"train": 1})
    earlier = {a.actor_id for a in actors(cluster, "RayTrainWorker")}
    run_dir, log = tmp_path / "runs" / "lost-node", tmp_path / "pretrain.log"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "pretrain",
            "--address",
            cluster.gcs_address,
            "--config",
            placement_file(tmp_path),
            *tiny(tmp_path, epochs=4),
            "--set",
            "train.name=lost-node",
            "--set",
            "train.checkpoint_every_steps=1",
            "--set",
            "train.max_failures=1",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        env=cluster.env(),
        stdout=log.open("w"),  # a file, not a pipe nobody reads while the run goes on
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while (registered := registered_step(run_dir)) < 1:
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint registered"
            time.sleep(0.1)
        (worker,) = [a for a in actors(cluster, "RayTrainWorker") if a.state == "ALIVE"]
        lost = next(n for n in cluster.nodes if n.node_id == worker.node_id)
        assert lost is not cluster.nodes[0]  # a train node, not the head
        cluster.kill_node(lost)
        assert run.poll() is None, "the run ended before its node was lost"
        run.wait(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, log.read_text()[-4000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 8  # 4 epochs × 2 steps: the run completed
    client = MlflowClient(summary["tracking_uri"])
    # logged only by a worker that restored a checkpoint: once, from the one registered when
    # the node was lost (or a later one the controller took in before it saw the loss)
    (resumed,) = client.get_metric_history(summary["run_id"], "resumed_from_step")
    assert registered <= resumed.value < summary["steps"], (registered, resumed.value)
    survivor = ({cluster.nodes[1].node_id, spare.node_id} - {lost.node_id}).pop()
    workers = [a for a in actors(cluster, "RayTrainWorker") if a.actor_id not in earlier]
    # the first worker died with its node; its replacement ran on the other train node
    assert {a.node_id for a in workers} == {lost.node_id, survivor}
