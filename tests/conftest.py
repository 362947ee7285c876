import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
def ray_local():
    """One local Ray for the whole test session (start-up costs seconds).

    4 logical CPUs on a 2-core machine: 2 train workers plus room for Ray Data.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, object_store_memory=300 * 2**20, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
