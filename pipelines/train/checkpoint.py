"""Checkpoint files: everything needed to continue a run exactly, loadable with weights_only."""

import os
from pathlib import Path

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
