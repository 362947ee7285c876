"""Each method of this family through the real pipeline pieces, without Ray: its recipe with
the embedded profile -> its view maker on JPEGs -> TrainStep (normalise, augment, hooks,
optimizer) for 2 steps."""

import numpy as np
import pytest
import torch

from pipelines.config.layers import load_config
from pipelines.data.stream.views import view_maker
from pipelines.train.model import build_method
from pipelines.train.step import TrainStep, place
from tests import images


def jpeg(seed: int) -> bytes:
    return images.jpeg(40, 32, seed)


@pytest.mark.parametrize(
    "method", ["swav", "barlow_twins", "vicreg", "rotnet", "relative_loc", "jigsaw"]
)
def test_recipe_views_train_step(method):
    cfg = load_config(method)
    rows = {
        "key": np.array([f"k{i}" for i in range(6)], dtype=object),
        "image": np.array([jpeg(i) for i in range(6)], dtype=object),
        "label": np.arange(6, dtype=np.int32),
    }
    views = view_maker(cfg.views, cfg.data.bad_images, seed=0)(rows)
    batch = {k: torch.from_numpy(v) for k, v in views.items()}
    batch.pop("label")  # as the worker loop does
    assert set(batch) - set(cfg.views.groups) <= {"rotation", "position", "permutation"}
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    step = TrainStep(place(build_method(cfg), cfg, device), cfg, device, 2, 1)
    results = [step(batch, i) for i in range(2)]
    assert all(np.isfinite(r.loss) for r in results)
    assert results[0].metrics["lr"] > 0
