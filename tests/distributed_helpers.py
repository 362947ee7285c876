"""Run a function in N local processes joined by a gloo process group (no Ray needed)."""

import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world)
        error = None
    except Exception:
        result, error = None, traceback.format_exc()
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump((result, error), f)


def run_distributed(fn: Callable, world: int = 2) -> list:
    """``fn(rank, world)`` in ``world`` processes; returns the results in rank order.

    ``fn`` must be a module-level function (it is pickled into the children).
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, _free_port(), fn, out_dir), nprocs=world, join=True)
        results = []
        for rank in range(world):
            with open(os.path.join(out_dir, f"{rank}.pkl"), "rb") as f:
                result, error = pickle.load(f)
            if error:
                raise RuntimeError(f"rank {rank} failed:\n{error}")
            results.append(result)
    return results
