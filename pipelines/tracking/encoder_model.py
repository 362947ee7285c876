"""The encoder as an MLflow model that loads without unpickling anything.

A logged encoder is a ``python_function`` model whose loader is this module
(``loader_module: pipelines.tracking.encoder_model``), with its data under
``data/encoder/``:

- ``backbone.safetensors``: the backbone's weights under portable names
  (:meth:`ssl_models.export.Encoder.portable_state_dict`; a ResNet's load into
  ``torchvision.models.resnet50()`` with ``fc = nn.Identity()``), with the input's ``mean``,
  ``std`` and ``image_size`` in the file's metadata;
- ``encoder.json``: :meth:`ssl_models.export.Encoder.describe`, how to rebuild it.

``mlflow.pyfunc.load_model(uri)`` gives a model whose ``predict(images)`` returns features and
whose ``get_raw_model()`` is the :class:`~ssl_models.export.Encoder`; it needs this package
installed, and works with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``. Safetensors holds
tensors and JSON only: loading it runs no stored code, unlike a pickled module (anyone able to
write to the registry could otherwise run code on every machine that loads from it).
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_models.export import Encoder

FORMAT = "sslpipe-encoder/1"
DATA_DIR = "encoder"  # the data directory's name; MLflow copies it to data/encoder
WEIGHTS_FILE = "backbone.safetensors"
SPEC_FILE = "encoder.json"


def save_encoder(encoder: Encoder, directory: str | Path) -> Path:
    """Write ``encoder`` as ``directory/encoder/{backbone.safetensors, encoder.json}``; return
    that ``encoder`` directory."""
    from safetensors.torch import save_file

    out = Path(directory) / DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    description = {"format": FORMAT, **encoder.describe()}
    metadata = {
        "format": FORMAT,
        "mean": json.dumps(description["mean"]),
        "std": json.dumps(description["std"]),
        "image_size": str(description["image_size"]),
    }
    save_file(encoder.portable_state_dict(), str(out / WEIGHTS_FILE), metadata=metadata)
    (out / SPEC_FILE).write_text(json.dumps(description, indent=2))
    return out


def load_encoder(directory: str | Path) -> Encoder:
    """The encoder :func:`save_encoder` wrote to ``directory`` (its ``encoder`` directory)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    description = json.loads((directory / SPEC_FILE).read_text())
    if description.get("format") != FORMAT:
        raise ValueError(f"{directory}: format {description.get('format')!r}, expected {FORMAT}")
    state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    return Encoder.from_portable(description, state)


class EncoderModel:
    """What ``mlflow.pyfunc.load_model`` returns the implementation of: features of images."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder.eval()

    @torch.no_grad()
    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """model_input: (B, 3, S, S) float images in [0, 1] -> (B, out_dim) float32 features."""
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.encoder(images).numpy()

    def get_raw_model(self) -> Encoder:
        return self.encoder


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> EncoderModel:
    """MLflow's loader hook: ``data_path`` is the model's ``data/encoder`` directory."""
    return EncoderModel(load_encoder(data_path))
