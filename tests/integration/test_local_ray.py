"""The Ray a command starts on this machine: found running by a second start, and stopped in a
thread while the command's last work goes on, its processes gone when the thread is joined."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = r"""
import json, os, time
import ray
from pipelines.cluster.local import start_local_ray, stop_ray_in_thread
from pipelines.config.layers import load_config
from pipelines.train.trainer import ensure_ray

cfg = load_config()
started = ensure_ray(cfg)  # no Ray yet in this process: starts one
again = ensure_ray(cfg)  # running: leaves it, and says it did not start it
node = ray._private.worker._global_node
pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
stopping = stop_ray_in_thread()
busy = 0
deadline = time.time() + 0.5
while time.time() < deadline:  # the caller's work meanwhile (its own thread, the GIL shared)
    busy += 1
stopping.join()

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

print(json.dumps({"started": started, "again": again, "initialized": ray.is_initialized(),
                  "processes": len(pids), "alive": [p for p in pids if alive(p)], "busy": busy}))
"""


def test_a_ray_started_here_stops_in_a_thread_and_its_processes_are_gone():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["started"] is True and got["again"] is False
    assert got["initialized"] is False
    assert got["processes"] >= 2  # the GCS and the raylet at least
    assert got["alive"] == []
    assert got["busy"] > 0
