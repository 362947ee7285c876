"""Checkpoint files: everything needed to continue a run exactly, loadable with weights_only.

A checkpoint directory holds one ``state.pt``:

- ``model``: the method's state dict — heads, EMA teachers and loss state kept as buffers (DINO
  centre, MoCo and SwAV queues) included;
- ``optimizer`` (momentum buffers, Adam moments, the groups' current lr and weight decay);
- ``step`` (optimizer steps done: every schedule is a function of it), ``epoch`` (the epoch the
  checkpoint was taken in), ``epoch_step`` (its steps done), ``epoch_done``;
- ``rng``: one entry per rank (torch CPU and CUDA, numpy, python, the train-side augmentation
  generator);
- ``probe``: the online linear probe, when enabled;
- ``pending_metrics``: rank 0's metrics not yet accepted by MLflow, re-sent on resume;
- ``config``: the resolved config as plain data.

Only tensors and plain containers go in, so ``torch.load(weights_only=True)`` reads it back.
"""

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict) -> Path:
    """Write ``state`` to ``directory/state.pt`` through a temporary file (never half-written)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {STATE_FILE}; not an sslpipe checkpoint")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_state_uri(uri: str, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's state from a local directory or a storage URI (``s3://…``), read with
    pyarrow's filesystem (no Ray needed)."""
    if "://" not in uri:
        return load_state(uri, map_location)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    path = f"{root.rstrip('/')}/{STATE_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no {STATE_FILE} (deleted, or not an sslpipe checkpoint)")
    with fs.open_input_stream(path) as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


# --- random number generators -----------------------------------------------------------------


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's random state, in types ``weights_only`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
        state["generator_device"] = str(generator.device)
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def gather_rng(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's random state, in rank order, on every rank (a collective: all ranks call it
    together). One process: ``[local]``."""
    from ssl_models import distributed

    if not distributed.is_distributed():
        return [local]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, _cpu(local))
    return out


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
