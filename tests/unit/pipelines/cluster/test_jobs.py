"""``--address``: what a Ray job runs, the resource check, and failing fast without a cluster."""

import argparse
import json
import time

import pytest

from pipelines.cluster import checks as cluster_checks
from pipelines.cluster import job_package, jobs
from pipelines.cluster.checks import ClusterError, Demand, capacity, check_fits, demands_of
from pipelines.cluster.jobs import job_argv
from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError
from tests.conftest import free_port


def test_job_argv_drops_the_submitters_options_and_keeps_the_rest():
    argv = [
        "pretrain",
        "--address",
        "http://head:8265",
        "--epochs",
        "2",
        "--summary-json=out.json",
        "--no-resource-check",
        "--set",
        "optim.base_lr=0.5",
    ]
    assert job_argv(argv) == ["pretrain", "--epochs", "2", "--set", "optim.base_lr=0.5"]


def test_a_local_config_file_travels_as_set_pairs_before_the_users_own(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(
        "method: byol\noptim:\n  base_lr: 0.2\nviews:\n  groups:\n    global:\n"
        "      scale: [0.3, 1.0]\n"
    )
    argv = ["pretrain", "--config", str(path), "--set", "optim.base_lr=0.4", "--epochs", "1"]
    out = job_argv(argv)
    assert out[0] == "pretrain" and "--config" not in out
    assert out[-4:] == ["--set", "optim.base_lr=0.4", "--epochs", "1"]
    # resolving the job's command line gives what the file plus flags give here
    sets = [out[i + 1] for i, t in enumerate(out) if t == "--set"]
    cfg = load_config(overrides={**parse_set(sets), "train": {"epochs": 1}})
    direct = load_config(
        None, str(path), {**parse_set(["optim.base_lr=0.4"]), "train": {"epochs": 1}}
    )
    assert cfg == direct
    assert cfg.method == "byol" and cfg.optim.base_lr == 0.4
    assert cfg.views.groups["global"].scale == (0.3, 1.0)


def test_a_config_path_that_is_not_here_is_left_for_the_cluster():
    argv = ["pretrain", "--config", "/home/ray/config/pretrain.yaml"]
    assert job_argv(argv) == argv


def test_an_abbreviated_option_that_must_be_removed_is_refused():
    with pytest.raises(ConfigError, match="--summary: with --address, spell"):
        job_argv(["pretrain", "--summary", "s.json"])


def test_capacity_counts_whole_bundles_per_node():
    assert capacity({"CPU": 1, "train": 1}, {"CPU": 4, "train": 2}) == 2
    assert capacity({"CPU": 1, "train": 1}, {"CPU": 4}) == 0
    assert capacity({"CPU": 0.5}, {"CPU": 2}) == 4


def test_demands_follow_the_config():
    cfg = load_config(
        overrides=parse_set(
            [
                "train.workers=4",
                "train.batch_size=64",
                "train.use_gpu=true",
                "train.worker_resources={train: 1}",
                "data.task_resources={data: 0.01}",
            ]
        )
    )
    workers, data = demands_of(cfg)
    assert workers == Demand("train worker", {"CPU": 1.0, "train": 1.0, "GPU": 1.0}, 4)
    assert data == Demand("data task", {"CPU": 1.0, "data": 0.01}, 1)


def test_an_elastic_run_needs_its_fewest_workers_to_start():
    cfg = load_config(overrides=parse_set(["train.workers=[2, 4]", "train.batch_size=48"]))
    workers, _ = demands_of(cfg)
    assert workers.count == 2


def test_a_cluster_without_the_asked_resources_is_named():
    nodes = [{"CPU": 8, "data": 4, "node:10.0.0.1": 1}, {"CPU": 2, "train": 1}]
    demands = [Demand("train worker", {"CPU": 1, "train": 1}, 2)]
    with pytest.raises(ClusterError) as info:
        check_fits(demands, nodes, "http://head:8265")
    message = str(info.value)
    assert "can hold 1 of the 2 train worker(s) of {CPU: 1, train: 1}" in message
    assert "{CPU: 2, train: 1}" in message and "node:" not in message
    assert "train.worker_resources" in message and "--no-resource-check" in message
    check_fits([Demand("train worker", {"CPU": 1, "train": 1}, 1)], nodes, "x")  # fits


def test_demands_that_fit_alone_but_not_together_are_refused():
    nodes = [{"CPU": 2, "train": 1, "data": 1}]
    demands = [Demand("train worker", {"CPU": 2, "train": 1}), Demand("data task", {"CPU": 1})]
    with pytest.raises(ClusterError, match=r"holds \{CPU: 2\} but the job needs \{CPU: 3\}"):
        check_fits(demands, nodes, "x")


@pytest.mark.parametrize(
    "address",
    [
        "http://127.0.0.1:{port}",  # a port nothing listens on: refused at once
        "ray://127.0.0.1:{port}",
        "127.0.0.1:{port}",
        "http://10.255.255.1:8265",  # unroutable: without a timeout, a TCP connect hangs ~2 min
        "ray://10.255.255.1:10001",
    ],
)
def test_an_unreachable_address_is_an_error_not_a_hang(address, monkeypatch):
    monkeypatch.setattr(cluster_checks, "PROBE_SECONDS", 1.0)
    address = address.format(port=free_port())  # bound and released: nothing listens there
    args = argparse.Namespace(address=address, no_resource_check=False, summary_json=None)
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"--address {address}"):
        jobs.submit_or_connect(args, ["pretrain", "--address", address], [])
    # not a speed check: only that the probe's timeout, not TCP's minutes, bounds the wait
    assert time.monotonic() - started < 30


def test_no_address_runs_here(monkeypatch):
    monkeypatch.delenv(jobs.JOB_ENTRYPOINT_ENV, raising=False)
    args = argparse.Namespace(address=None, no_resource_check=False, summary_json=None)
    assert jobs.submit_or_connect(args, ["pretrain"], []) is None


def test_placement_keys_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"'train.worker_resources.GPU': CPUs and GPUs come"):
        load_config(overrides=parse_set(["train.worker_resources={GPU: 1}"]))
    with pytest.raises(ConfigError, match=r"'data.task_resources.data': must be positive"):
        load_config(overrides=parse_set(["data.task_resources={data: 0}"]))
    with pytest.raises(ConfigError, match=r"'data.task_resources.data': expected a number"):
        load_config(overrides=parse_set(["data.task_resources={data: lots}"]))


@pytest.mark.parametrize(
    "location, relative",
    [
        ("sslpipe-runs", True),
        ("./runs", True),
        ("sqlite:///mlflow.db", True),
        ("file:mlruns", True),
        ("/mnt/shared/runs", False),
        ("~/runs", False),  # the user's home: absolute once expanded
        ("sqlite:////mnt/shared/mlflow.db", False),
        ("file:///mnt/shared/mlruns", False),
        ("s3://bucket/runs", False),
        ("http://mlflow:5000", False),
    ],
)
def test_relative_local_paths_are_told_from_absolute_and_remote_ones(location, relative):
    assert jobs.relative_local_path(location) is relative


def test_a_submitted_job_refuses_relative_outputs_before_contacting_the_cluster():
    # a port nothing listens on: had the check come after the probe, this would be a ClusterError
    address = f"http://127.0.0.1:{free_port()}"
    args = argparse.Namespace(address=address, no_resource_check=False, summary_json=None)
    outputs = {"--storage": "sslpipe-runs", "--tracking-uri": "s3://bucket/mlflow", "DEST": ""}
    with pytest.raises(ConfigError, match=r"--storage 'sslpipe-runs' would be written there") as e:
        jobs.submit_or_connect(args, ["pretrain", "--address", address], [], outputs)
    assert "tracking" not in str(e.value) and "DEST" not in str(e.value)
    # a driver connecting to the cluster (not a job) writes where it runs: no such check
    args.address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError):
        jobs.submit_or_connect(args, ["pretrain", "--address", args.address], [], outputs)


def test_pretrain_and_shard_name_their_relative_outputs_for_a_job(tmp_path, capsys):
    from pipelines.cli import main

    address = f"http://127.0.0.1:{free_port()}"
    assert main(["pretrain", "--address", address]) == 2
    err = capsys.readouterr().err
    assert "--storage 'sslpipe-runs', --tracking-uri 'sqlite:///mlflow.db'" in err
    absolute = ["--storage", str(tmp_path / "runs"), "--tracking-uri", "http://mlflow:5000"]
    assert main(["pretrain", "--address", address, *absolute]) == 1  # on to the probe
    assert "--storage" not in capsys.readouterr().err
    assert main(["shard", str(tmp_path), "shards", "--address", address]) == 2
    assert "DEST 'shards' would be written there" in capsys.readouterr().err


def test_credentials_travel_in_the_environment_not_on_the_command_line():
    import subprocess
    import sys

    argv = [
        "pretrain",
        "--tracking-uri",
        "https://bob:hunter2@mlflow.example.com",
        "--set",
        "data.s3_endpoint=http://minio:m1n10pw@minio:9000",
        "--set",
        "tracking.api_token=t0ken",
        "--set",
        "optim.base_lr=0.5",
        "--address",
        "http://head:8265",
    ]
    command = job_argv(argv)
    entrypoint, env = jobs.job_entrypoint(command)
    for secret in ("hunter2", "m1n10pw", "t0ken"):
        assert secret not in entrypoint
    assert "optim.base_lr=0.5" in entrypoint  # what holds no secret stays readable
    runtime_env = jobs.runtime_env_for_job(env)
    assert runtime_env["env_vars"][jobs.IN_JOB_ENV] == "1"
    assert set(env) <= set(runtime_env["env_vars"]) and len(env) == 3
    # Ray runs the entrypoint in a shell: the job sees the command line as typed
    prefix = "python -m pipelines.cli"
    assert entrypoint.startswith(prefix)
    show = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    out = subprocess.run(
        ["sh", "-c", show + entrypoint[len(prefix) :]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == command


def test_untracked_files_that_look_like_secrets_stay_home(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    files = {
        "pipelines/code.py": "x = 1",
        "tests/fixtures/server.pem": "tracked test fixture",  # tracked: part of the code
        ".env": "AWS_SECRET_ACCESS_KEY=x",
        "deploy.key": "-----BEGIN PRIVATE KEY-----",
        "infra/credentials.json": "{}",
        "infra/.env.production": "PW=y",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pipelines/code.py", "tests/fixtures/server.pem"], check=True)
    monkeypatch.setattr(job_package, "PROJECT_ROOT", tmp_path)

    def uploaded() -> set[str]:
        env = jobs.runtime_env_for_job()
        out = tmp_path.parent / f"{tmp_path.name}.zip"
        _zip_files(env["working_dir"], env["excludes"], str(out), include_gitignore=True)
        with zipfile.ZipFile(out) as z:
            return {n for n in z.namelist() if not n.endswith("/")}

    monkeypatch.delenv(jobs.UPLOAD_SECRET_FILES_ENV, raising=False)
    assert uploaded() == {"pipelines/code.py", "tests/fixtures/server.pem"}
    monkeypatch.setenv(jobs.UPLOAD_SECRET_FILES_ENV, "1")  # asked for: everything goes
    assert uploaded() == set(files)


def test_a_job_uploads_the_whole_checkout():
    # the working_dir is the project root (pyproject.toml, every package), not a package inside
    from pipelines.cluster.job_package import PROJECT_ROOT

    assert (PROJECT_ROOT / "pyproject.toml").is_file()
    assert all((PROJECT_ROOT / p).is_dir() for p in ("pipelines", "ssl_models", "tuning"))
    assert jobs.runtime_env_for_job()["working_dir"] == str(PROJECT_ROOT)
