"""Elastic workers and drained nodes on a multi-node Ray on this machine (``tests/ray_cluster.py``).

The head advertises ``data`` (decoding) and two worker nodes ``train`` (one train worker each).
A run with ``train.workers: [1, 2]`` starts with both, goes on with one when a train node is
lost, and grows back to two when a node joins; a train node told to drain (a spot preemption
notice with a deadline) gets a checkpoint before it goes, and the run resumes from it.

Slow (minutes: worker-group restarts, Ray Train's resize checks and the autoscaling
coordinator's 20 s refresh): ``SSLPIPE_SLOW=1``, under ``flock /tmp/sslpipe-heavy.lock``.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.tracking.runs import find_run
from tests.e2e.test_cluster import actors, placement_file, registered_step, tiny
from tests.ray_cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 40  # 2 steps each (160 images, batch 64): long enough to outlast the resizes


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(
        extra_env={
            # Ray Train's drain watcher polls every 5 s by default; a restart whose placement
            # cannot be met yet (a lost node still counted) is retried after this
            "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
        }
    )
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process's state API calls, as c.env()
    try:
        c.start_head(num_cpus=2, resources={"data": 4})
        c.add_node(num_cpus=1, resources={"train": 1})
        c.add_node(num_cpus=1, resources={"train": 1})
        yield c
    finally:
        c.stop()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def start_run(cluster: LocalCluster, tmp_path: Path, name: str, *sets: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "pretrain",
        "--address",
        cluster.gcs_address,
        "--config",
        placement_file(tmp_path),
        *sized(tmp_path),
        "--set",
        "train.workers=[1, 2]",
        "--set",
        f"train.name={name}",
        "--set",
        "train.log_every_steps=1",
        "--set",
        "tracking.flush_seconds=1",
        *[a for s in sets for a in ("--set", s)],
        "--summary-json",
        str(tmp_path / "summary.json"),
    ]
    log = (tmp_path / "pretrain.log").open("w")  # a file, not a pipe nobody reads meanwhile
    return subprocess.Popen(args, env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)


def sized(tmp_path: Path) -> list[str]:
    """``tiny``'s run without its ``--workers 1`` (a flag outranks ``--set``)."""
    args = tiny(tmp_path, epochs=EPOCHS)
    at = args.index("--workers")
    return args[:at] + args[at + 2 :]


def alive_workers(cluster: LocalCluster) -> list:
    return [a for a in actors(cluster, "RayTrainWorker") if a.state == "ALIVE"]


def wait_until(what: str, done, run: subprocess.Popen, log: Path, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not (value := done()):
        assert run.poll() is None, (
            f"the run ended while waiting for {what}:\n" + log.read_text()[-3000:]
        )
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)
    return value


def finish(run: subprocess.Popen, log: Path, tmp_path: Path) -> dict:
    try:
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, log.read_text()[-4000:]
    return json.loads((tmp_path / "summary.json").read_text())


def history(summary: dict, key: str) -> list[tuple[int, float]]:
    """(step, value) in the order logged: a restart may log at the step of an earlier one."""
    client = MlflowClient(summary["tracking_uri"])
    found = client.get_metric_history(summary["run_id"], key)
    return [(m.step, m.value) for m in sorted(found, key=lambda m: (m.timestamp, m.step))]


def test_a_run_shrinks_with_a_lost_node_and_grows_when_one_joins(cluster, tmp_path):
    log = tmp_path / "pretrain.log"
    run = start_run(
        cluster,
        tmp_path,
        "elastic",
        "train.checkpoint_every_steps=2",
        "train.max_failures=3",  # the lost node's worker is a failure; a startup retry is not
        "train.resize_check_seconds=5",
    )
    try:
        wait_until("two workers", lambda: len(alive_workers(cluster)) == 2, run, log)
        run_dir = tmp_path / "runs" / "elastic"
        wait_until("a checkpoint", lambda: registered_step(run_dir) >= 2, run, log)
        train_nodes = [n for n in cluster.nodes[1:] if n.process.poll() is None]
        lost = train_nodes[-1]
        cluster.kill_node(lost)
        at_loss = registered_step(run_dir)
        # one worker on the node left, training on past the checkpoint of the loss
        wait_until(
            "training on one worker",
            lambda: len(alive_workers(cluster)) == 1 and registered_step(run_dir) > at_loss + 2,
            run,
            log,
        )
        cluster.add_node(num_cpus=1, resources={"train": 1})
        wait_until("two workers again", lambda: len(alive_workers(cluster)) == 2, run, log)
    except BaseException:
        run.kill()
        raise
    summary = finish(run, log, tmp_path)

    assert summary["steps"] == EPOCHS * 2  # every optimizer step of the schedule, once
    workers = [int(v) for _, v in history(summary, "workers")]
    # logged at every (re)start: 2, then 1 after the loss, then 2 after the join (a startup
    # retry may log a count twice)
    assert workers[0] == 2 and 1 in workers and workers[-1] == 2, workers
    assert workers.index(1) < len(workers) - 1 - workers[::-1].index(2)
    resumed = [int(v) for _, v in history(summary, "resumed_from_step")]
    assert len(resumed) >= 2 and resumed == sorted(resumed), resumed
    assert resumed[0] >= at_loss and resumed[-1] < summary["steps"]


def test_a_draining_node_gets_a_checkpoint_and_the_run_resumes_from_it(cluster, tmp_path):
    log = tmp_path / "pretrain.log"
    run = start_run(
        cluster,
        tmp_path,
        "drain",
        # no checkpoint but the last one (and the drain's): the one resumed from is the drain's
        f"train.checkpoint_every_epochs={EPOCHS}",
        "train.drain_check_steps=1",
        "train.max_failures=0",  # a preemption is not a failure: Ray Train counts it apart
        "train.resize_check_seconds=3600",
    )
    try:
        workers = wait_until(
            "two workers", lambda: w if len(w := alive_workers(cluster)) == 2 else None, run, log
        )
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        run_id = wait_until("the MLflow run", lambda: _run_id(uri), run, log)
        client = MlflowClient(uri)
        wait_until(
            "a few steps", lambda: len(client.get_metric_history(run_id, "loss")) >= 3, run, log
        )
        run_dir = tmp_path / "runs" / "drain"
        assert registered_step(run_dir) == 0  # no checkpoint yet
        node_id = max(w.node_id for w in workers)
        drained = next(n for n in cluster.nodes if n.node_id == node_id)
        requested = time.time()
        cluster.drain_node(drained, deadline_seconds=30)
        step = wait_until("the drain's checkpoint", lambda: registered_step(run_dir), run, log)
        # the cloud takes the node at the deadline (a little after: Ray Train's controller,
        # polling every 2 s, stops the group there first, as a preemption, not a failure)
        time.sleep(max(0.0, requested + 35 - time.time()))
        cluster.kill_node(drained)
    except BaseException:
        run.kill()
        raise
    summary = finish(run, log, tmp_path)

    assert summary["steps"] == EPOCHS * 2
    # one drain, checkpointed at the step it was seen (a metric the resumed worker re-sends,
    # had MLflow not taken it before the checkpoint, may appear twice)
    assert set(history(summary, "drain_checkpoint_step")) == {(step, step)}
    resumed = [int(v) for _, v in history(summary, "resumed_from_step")]
    # the group restarted after the deadline from the drain's checkpoint (the only one)
    assert resumed and resumed[0] == step, resumed


def _run_id(uri: str) -> str | None:
    try:
        return find_run(uri, "sslpipe", "drain").info.run_id
    except Exception:  # the store or the run does not exist yet
        return None
