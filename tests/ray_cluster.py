"""A multi-node Ray on this machine, started with ``ray start`` like a real cluster's nodes.

Every node is a ``ray start --block`` process this helper started, with its own temp dir (under
the cluster's) and ports, so it never meets another Ray instance on the machine; stopping a node
is SIGKILL to every process of it (``kill_node``), and ``stop`` ends them all. (SIGTERM to
``ray start`` would drain the node first, and work on it could go on until the drain deadline.)

One temp dir per node, as on the machines of a real cluster: nodes sharing one share
``session_*/runtime_resources``, where each node's runtime-env agent unpacks a job's
``working_dir`` with ``overwrite=True`` (ray-project/ray#49313): the second node to set up the
job deleted the copy that was already the current directory of the job's driver on the head.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, free_port

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Node:
    process: subprocess.Popen
    resources: dict[str, float]
    node_id: str = ""
    lost: bool = False  # killed on purpose (kill_node): not expected alive any more


@dataclass
class LocalCluster:
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="sslrc-", dir="/tmp"))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. Ray Train's poll intervals

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The nodes' environment: this venv's python first on PATH (job entrypoints run
        ``python``) and this checkout importable by every worker."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(REPO)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray 2.60 turns token auth on when ~/.ray/auth_token exists; this cluster listens on
        # 127.0.0.1 only, and its clients (the CLI, the state API here) carry no token
        env["RAY_AUTH_MODE"] = "disabled"
        env["SSLPIPE_TRACEBACK"] = "1"  # a failing job's log shows where
        env.pop("RAY_ADDRESS", None)
        env.update(self.extra_env)
        return env

    def _start(self, args: list[str], num_cpus: int, resources: dict[str, float]) -> Node:
        node_dir = Path(self.temp_dir) / f"node-{len(self.nodes)}"
        node_dir.mkdir()
        command = [
            RAY,
            "start",
            "--block",
            f"--temp-dir={node_dir}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            "--object-store-memory=100000000",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
            *args,
        ]
        log = open(Path(self.temp_dir) / f"node-{len(self.nodes)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            command,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # its own process group: kill_node ends the whole node
        )
        node = Node(process, resources)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> Node:
        head = self._start(
            [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
                "--node-ip-address=127.0.0.1",
            ],
            num_cpus,
            resources,
        )
        self.wait_for_nodes(1)
        return head

    def add_node(self, num_cpus: int, resources: dict[str, float]) -> Node:
        node = self._start(
            [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1"], num_cpus, resources
        )
        self.wait_for_nodes(sum(not n.lost for n in self.nodes))
        return node

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        return list_nodes(
            address=self.dashboard,
            filters=[("state", "=", "ALIVE")],
            timeout=10,
            raise_on_missing_output=False,  # a node killed earlier has no agent to answer
        )

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> None:
        """Until ``count`` nodes are alive; fills in each node's id from its resources."""
        deadline = time.monotonic() + timeout
        error = None
        while True:
            for node in self.nodes:
                if not node.lost and node.process.poll() is not None:
                    raise RuntimeError(f"ray start exited: see {self.temp_dir}/node-*.log")
            try:
                alive = self.alive_nodes()
            except Exception as e:  # the dashboard is not up yet, or busy
                alive, error = [], e
            if len(alive) == count:
                for node in self.nodes:
                    if not node.node_id and node.process.poll() is None:
                        key = next(iter(node.resources))
                        node.node_id = next(
                            n.node_id
                            for n in alive
                            if key in n.resources_total
                            and n.node_id not in {m.node_id for m in self.nodes}
                        )
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(alive)} of {count} Ray nodes alive after {timeout} s"
                    + (f" (state API: {error!r})" if error and not alive else "")
                )
            time.sleep(1)

    def kill_node(self, node: Node, timeout: float = 60.0) -> None:
        """The node is lost at once, as when its machine dies: SIGKILL to every process of it
        (``ray start``, its raylet and agents, and the workers, which the raylet starts in
        process groups of their own but in the node's session)."""
        node.lost = True
        session = node.process.pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getsid(int(entry)) == session:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        node.process.wait(timeout=timeout)

    def drain_node(self, node: Node, deadline_seconds: int) -> None:
        """Tell the GCS the node will be preempted in ``deadline_seconds``, as a cloud's spot
        notice does through Ray's autoscaler. The node keeps running: ending it at the deadline
        is the caller's part (``kill_node``), as it is the cloud's."""
        subprocess.run(
            [
                RAY,
                "drain-node",
                f"--address={self.gcs_address}",
                f"--node-id={node.node_id}",
                "--reason=DRAIN_NODE_REASON_PREEMPTION",
                "--reason-message=spot preemption (test)",
                f"--deadline-remaining-seconds={deadline_seconds}",
            ],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        """Kill every node (workers first, the head last): nothing of a test cluster needs a
        graceful stop, which drains each worker node first and took half a minute."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                self.kill_node(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
