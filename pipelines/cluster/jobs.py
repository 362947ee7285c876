"""Running a command on an existing Ray cluster: ``--address`` for ``sslpipe pretrain``, ``shard``
(and any command that adds these arguments).

``submit_or_connect(args, argv, demands)`` routes by ``args.address``:

- none: returns None; the command runs here on a local Ray, as without a cluster (inside a Ray
  job, on the job's cluster).
- ``http(s)://HEAD:8265`` (the dashboard): submits the same command line, minus ``--address``
  and ``--summary-json``, as a Ray job through the Jobs API with this project as the job's
  ``working_dir``; streams its logs; fetches the summary the job prints after ``SUMMARY_MARKER``
  into ``--summary-json``; returns the job's exit code.
- ``ray://HEAD:10001`` (Ray Client), ``auto`` or ``HOST:PORT`` (the GCS): connects this process
  as the driver (``ray.init``) and returns None; the command goes on here against the cluster.

Before either, the address must answer within ``cluster_checks.PROBE_SECONDS`` and the live
nodes must be able to hold ``demands`` (e.g. the train workers with their CPU/GPU/custom
resources): a wrong address or a cluster without ``train`` nodes is an error in seconds, not a
job that waits forever.
An autoscaling cluster whose groups start from zero nodes passes ``--no-resource-check``.

Credentials stay off a job's command line, which Ray prints and keeps in its job table: an
argument that holds one (a tracking URI with a password, ``--set`` of a secret-named key; see
``pipelines.tracking.secrets``) travels in an environment variable of the job's runtime_env,
``SSLPIPE_JOB_SECRET_<i>``, and the entrypoint reads ``"$SSLPIPE_JOB_SECRET_<i>"`` in its place.
Ray keeps the runtime_env too, but does not print it; credentials the cluster's nodes already
hold in their environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, the AWS
variables) never leave them at all.

The job's working_dir is this project, minus :data:`EXCLUDES` and minus untracked files that
look like credentials (:data:`SECRET_FILES`: ``.env``, ``*.pem``, ``*.key``, ``credentials*``…;
files git tracks are part of the code and go). To upload those too, set
``SSLPIPE_JOB_UPLOAD_SECRET_FILES=1`` where the job is submitted.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pipelines.cluster.checks import (
    ClusterError,
    Demand,
    check_fits,
    nodes_via_dashboard,
    nodes_via_driver,
    probe_grpc,
    probe_http,
)
from pipelines.cluster.job_package import (  # noqa: F401  (part of this module's interface)
    EXCLUDES,
    IN_JOB_ENV,
    PROJECT_ROOT,
    SECRET_FILES,
    UPLOAD_SECRET_FILES_ENV,
    job_argv,
    job_entrypoint,
    runtime_env_for_job,
)
from pipelines.config.typed import ConfigError
from pipelines.tracking.secrets import redact_tree

SUMMARY_MARKER = "SSLPIPE_SUMMARY_JSON "  # a job's summary line in its log
JOB_ENTRYPOINT_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray's job supervisor sets it for every job


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="run on a Ray cluster: http://HEAD:8265 submits a Ray job (logs streamed, exit "
        "status returned); ray://HEAD:10001, auto or HOST:PORT drive the cluster from here",
    )
    parser.add_argument(
        "--no-resource-check",
        action="store_true",
        help="with --address: skip checking that the live nodes can hold the job (an "
        "autoscaling cluster that starts its groups from zero nodes)",
    )


def submit_or_connect(
    args: argparse.Namespace,
    argv: list[str],
    demands: list[Demand] | None = None,
    outputs: dict[str, str] | None = None,
) -> int | None:
    """See the module docstring. ``argv``: the command line as typed, without the program name
    (e.g. ``["pretrain", "--epochs", "2", "--address", "http://head:8265"]``). ``outputs``: what
    the command writes, by the option that sets it (e.g. ``{"--storage": "runs"}``); a submitted
    job refuses relative local paths among them (:func:`check_job_outputs`)."""
    address = getattr(args, "address", None)
    if not address:
        if os.environ.get(JOB_ENTRYPOINT_ENV):
            # a Ray job's entrypoint (ours, KubeRay's RayJob, `ray job submit`): its driver joins
            # the cluster the job runs on (RAY_ADDRESS), never a new local Ray
            import ray

            if not ray.is_initialized():
                ray.init()
                ray.data.DataContext.get_current().enable_progress_bars = False
        return None
    check = not getattr(args, "no_resource_check", False)
    if address.startswith(("http://", "https://")):
        check_job_outputs(outputs or {})
        probe_http(address)
        if check and demands:
            check_fits(demands, nodes_via_dashboard(address), address)
        return submit(address, job_argv(argv), getattr(args, "summary_json", None))
    connect(address, demands if check else None)
    return None


def relative_local_path(location: str) -> bool:
    """Whether a storage location or MLflow tracking URI names a relative path on the local
    filesystem: ``runs``, ``./runs``, ``sqlite:///mlflow.db``, ``file:mlruns``. Absolute paths
    (``/mnt/runs``, ``sqlite:////mnt/mlflow.db``, ``file:///mnt/mlruns``) and remote stores
    (``s3://…``, ``http(s)://…``) are not."""
    if location.startswith("sqlite:///"):
        return not location[len("sqlite:///") :].startswith("/")
    if location.startswith("file:"):
        path = location[len("file:") :]
        return not path.startswith("/")
    if "://" in location:
        return False
    return not Path(location).expanduser().is_absolute()


def check_job_outputs(outputs: dict[str, str]) -> None:
    """A job submitted through the Jobs API runs in a temporary copy of this project on the
    cluster (its ``working_dir``): a relative output path would be written into that copy and
    deleted with it. Refuse before submitting, naming each such option."""
    relative = [
        f"{option} {value!r}"
        for option, value in outputs.items()
        if value and relative_local_path(value)
    ]
    if relative:
        raise ConfigError(
            "a job submitted with --address http(s)://… runs in a temporary copy of the project "
            f"on the cluster, so {', '.join(relative)} would be written there and lost when the "
            "job ends: give an absolute path on storage the cluster's nodes share (e.g. "
            "/mnt/shared/runs, sqlite:////mnt/shared/mlflow.db), s3://bucket/prefix, or an "
            "MLflow server URL"
        )


# --- connecting a driver -----------------------------------------------------------------------


def connect(address: str, demands: list[Demand] | None) -> None:
    """``ray.init`` against the cluster (a Ray Client address uploads this project as the
    working_dir, so the cluster runs this code), then the resource check."""
    import ray

    if address != "auto":
        probe_grpc(address)
    runtime_env = runtime_env_for_job() if address.startswith("ray://") else None
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    except ConnectionError as e:
        raise ClusterError(f"--address {address}: {e}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False
    if demands:
        check_fits(demands, nodes_via_driver(), address)


def submit(address: str, argv: list[str], summary_json: str | None) -> int:
    """Submit ``python -m pipelines.cli ARGV`` as a job, stream its log, return its exit code."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    entrypoint, secret_env = job_entrypoint(argv)
    job_id = f"sslpipe-{argv[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env_for_job(secret_env), submission_id=job_id
    )
    print(f"sslpipe: submitted job {job_id} to {address}: {entrypoint}", flush=True)
    summary: dict | None = None
    try:
        summary = asyncio.run(_stream(client, job_id))
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print(f"\nsslpipe: stopped job {job_id}", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    while info.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.5)  # the log can end a moment before the status is final
        info = client.get_job_info(job_id)
    if summary is not None and summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2))
    if info.status == JobStatus.SUCCEEDED:
        return 0
    print(f"sslpipe: job {job_id} {info.status.value}: {info.message}", file=sys.stderr)
    return info.driver_exit_code or 1


async def _stream(client: Any, job_id: str) -> dict | None:
    """Print the job's log as it comes; return the summary its marker line carries."""
    summary, pending = None, ""
    async for chunk in client.tail_job_logs(job_id):
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.startswith(SUMMARY_MARKER):
                summary = json.loads(line[len(SUMMARY_MARKER) :])
            else:
                print(line, flush=True)
    if pending.startswith(SUMMARY_MARKER):
        summary = json.loads(pending[len(SUMMARY_MARKER) :])
    elif pending:
        print(pending, flush=True)
    return summary


def emit_summary(summary: dict) -> None:
    """In a submitted job: print the summary on one marked line for the submitter to fetch."""
    if os.environ.get(IN_JOB_ENV) == "1":
        print(SUMMARY_MARKER + json.dumps(redact_tree(summary)), flush=True)
