import logging
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # one intra-op thread, as Ray gives each 1-CPU task: on a busy 2-core machine OpenMP's
    # barriers otherwise make tiny tensor ops 1000× slower (20 ms instead of 20 µs, measured)
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SSLPIPE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set SSLPIPE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on localhost for the whole session; yields its URL.

    The standard AWS variables (endpoint, dummy keys, region) are set in this process before any
    Ray starts: ``ray_local`` depends on this fixture, so Ray's workers inherit them and plain
    ``s3://`` paths reach this server from every process. CLI subprocesses inherit them too.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the session's S3 server; yields ``s3://<bucket>``."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    name = f"{name.rstrip('-')}-{free_port()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole test session (start-up costs seconds).

    4 logical CPUs on a 2-core machine: 2 train workers plus room for Ray Data. Started after
    ``s3_server`` so its workers see the S3 endpoint.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, object_store_memory=300 * 2**20, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
