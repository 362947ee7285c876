"""``sslpipe tune`` interrupted after its first trial, then ``--resume``: the finished trial is
not run again, the unfinished one completes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

# 3.5 min on the shared 2-core machine (two CLI processes, each starting Ray): slow tier
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 2


def cli(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "tune",
        "--method",
        "simclr",
        "--storage",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *args,
        "--set",
        "backbone.width=0.25",
        "--set",
        "method_args.proj_hidden_dim=64",
        "--set",
        "train.cpus_per_worker=1",
        "--set",
        "data.embedded_train_per_class=13",
        "--set",
        "data.embedded_test_per_class=3",
        "--set",
        f"data.cache_dir={tmp_path / 'data'}",
    ]


def results_of(sweep: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sweep.glob("*/result.json"):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line]
        if reports:
            out[reports[0]["trial_id"]] = reports
    return out


def finished(reports: list[dict]) -> bool:
    # Tune's result.json has no done line for these trials: the last epoch is the sign (the
    # loop's epoch, counted from 1; Tune's iteration count restarts in a restarted trial)
    return reports[-1]["epoch"] == EPOCHS


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.seed: {grid: [0, 1]}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--space", str(space), "--scheduler", "fifo", "--metric", "loss", "--mode", "min"]
    args += ["--epochs", str(EPOCHS), "--workers", "1", "--batch-size", "64", "--name", "sweep"]
    proc = subprocess.Popen(cli(tmp_path, *args), cwd=tmp_path, env=env, start_new_session=True)
    sweep = tmp_path / "runs" / "sweep"
    deadline = time.time() + 240
    try:
        # interrupt once the first trial has reported its last epoch
        while time.time() < deadline and proc.poll() is None:
            if any(finished(r) for r in results_of(sweep).values()):
                break
            time.sleep(1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # the driver only: Tune saves state and exits
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = results_of(sweep)
    done = [t for t, r in before.items() if finished(r)]
    assert len(done) == 1
    done_reports = len(before[done[0]])

    out = subprocess.run(
        [*cli(tmp_path, "--resume", "--summary-json", str(tmp_path / "s.json"))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    after = results_of(sweep)
    assert len(after) == 2 and all(finished(r) for r in after.values())
    assert len(after[done[0]]) == done_reports  # not run again
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sorted(t["epochs"] for t in summary["trials"]) == [2, 2]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sslpipe")
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'",
    )
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
