"""Before a command runs on a cluster: does the address answer, and can the live nodes hold it?

``probe_http`` (a dashboard) and ``probe_grpc`` (a GCS or Ray Client address) answer within
``PROBE_SECONDS`` or raise; ``check_fits`` compares the command's ``Demand``s (what ``demands_of``
derives from a config) with the live nodes' resources. Each failure is a ``ClusterError`` that
names the address and what is missing, in seconds rather than a job that waits forever.
"""

import math
import sys
from dataclasses import dataclass
from urllib.parse import urlparse

from pipelines.config.schema import Config
from pipelines.train.batching import worker_range

PROBE_SECONDS = 5.0


class ClusterError(RuntimeError):
    """The cluster at ``--address`` is unreachable or cannot hold what the command asks for."""


@dataclass(frozen=True)
class Demand:
    """``count`` Ray tasks or actors of one shape that must fit on the cluster's nodes at once."""

    what: str  # e.g. "train worker", named in the error
    bundle: dict[str, float]  # resources of one, e.g. {"CPU": 1, "train": 1}
    count: int = 1


def demands_of(cfg: Config) -> list[Demand]:
    """What ``sslpipe pretrain`` with ``cfg`` needs at once: its train workers (an elastic
    run's fewest, ``train.workers: [min, max]``) and at least one data task (each holds 1 CPU
    and ``data.task_resources``)."""
    worker = {"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources}
    if cfg.train.use_gpu:
        worker["GPU"] = 1.0
    return [
        Demand("train worker", worker, worker_range(cfg.train.workers)[0]),
        Demand("data task", {"CPU": 1.0, **cfg.data.task_resources}, 1),
    ]


def probe_http(address: str) -> None:
    """A Ray dashboard answers at ``address``: its version, or 401/403 from a cluster with token
    auth (the Jobs client sends the token; this probe has none)."""
    import requests

    try:
        r = requests.get(f"{address.rstrip('/')}/api/version", timeout=PROBE_SECONDS)
    except requests.RequestException as e:
        raise ClusterError(
            f"--address {address}: no Ray dashboard answers there within {PROBE_SECONDS:.0f} s "
            f"({type(e).__name__}); is the cluster up and port 8265 forwarded (`ray dashboard "
            "infra/cluster/aws.yaml`, `kubectl port-forward svc/sslpipe-head-svc 8265`)?"
        ) from None
    if r.status_code in (401, 403):
        return
    try:
        r.json()["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise ClusterError(
            f"--address {address}: answers HTTP {r.status_code} but is not a Ray dashboard "
            "(the Jobs API is the dashboard's port, 8265 by default)"
        ) from None


def probe_grpc(address: str) -> None:
    """A GCS (HOST:PORT) or Ray Client (ray://HOST:PORT) address answers gRPC: an open TCP port
    alone proves little (a proxy may accept anything; channel readiness neither), and Ray's own
    client retries for about a minute."""
    import grpc

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise ClusterError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or http://")
    channel = grpc.insecure_channel(f"{parsed.hostname}:{parsed.port}")
    try:
        # a method no server has: a live gRPC server answers UNIMPLEMENTED at once
        channel.unary_unary("/sslpipe.Probe/Ping")(b"", timeout=PROBE_SECONDS)
    except grpc.RpcError as e:
        # UNIMPLEMENTED from a gRPC server; a plain HTTP server's 404 maps to the same code
        if e.code() == grpc.StatusCode.UNIMPLEMENTED and "http2 header" not in str(e.details()):
            return
        raise ClusterError(
            f"--address {address}: no Ray answers at {parsed.hostname}:{parsed.port} within "
            f"{PROBE_SECONDS:.0f} s (the GCS port is 6379 and the Ray Client port 10001 by "
            "default; is the cluster up and the port reachable?)"
        ) from None
    finally:
        channel.close()


def nodes_via_dashboard(address: str) -> list[dict[str, float]]:
    """The total resources of each live node, from the dashboard's state API."""
    from ray.util.state import list_nodes

    alive = [("state", "=", "ALIVE")]
    nodes = list_nodes(address=address, filters=alive, limit=10000, timeout=10)
    return [dict(n.resources_total) for n in nodes]


def nodes_via_driver() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def capacity(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many ``bundle``s one node holds."""
    fits = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(fits) if fits else sys.maxsize


def check_fits(demands: list[Demand], nodes: list[dict[str, float]], address: str) -> None:
    """Each demand fits on the nodes (bundles never span nodes), and all together fit the
    cluster's totals; otherwise a ClusterError naming what is missing."""
    shown = "; ".join(
        "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(n.items()) if _shown(k)) + "}"
        for n in nodes
    )
    totals: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            totals[k] = totals.get(k, 0.0) + v
    needed: dict[str, float] = {}
    for d in demands:
        held = sum(capacity(d.bundle, n) for n in nodes)
        if held < d.count:
            raise ClusterError(
                f"the cluster at {address} can hold {held} of the {d.count} {d.what}(s) of "
                f"{_fmt(d.bundle)} the config asks for; its live nodes hold [{shown}]. Add "
                "nodes with these resources or change the config (train.workers, "
                "train.cpus_per_worker, train.use_gpu, train.worker_resources, "
                "data.task_resources); an autoscaling cluster: --no-resource-check"
            )
        for k, v in d.bundle.items():
            needed[k] = needed.get(k, 0.0) + v * d.count
    short = {k: v for k, v in needed.items() if totals.get(k, 0.0) + 1e-9 < v}
    if short:
        raise ClusterError(
            f"the cluster at {address} holds {_fmt({k: totals.get(k, 0.0) for k in short})} "
            f"but the job needs {_fmt(short)} at once ({', '.join(d.what for d in demands)})"
        )


def _shown(key: str) -> bool:
    # Ray adds per-node resources (node:<ip>, memory, object_store_memory); the user's are the rest
    return not key.startswith("node:") and key not in ("memory", "object_store_memory")


def _fmt(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"
