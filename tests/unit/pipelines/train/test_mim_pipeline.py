"""The MIM methods through the pipeline's own pieces, without Ray: the embedded profile's
config, the CPU-side view recipe, the driver's tokenizer preparation and the training step."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from pipelines.config.layers import deep_merge, load_config
from pipelines.data.stream.views import ViewMaker, prepare_views
from pipelines.data.synthetic import ensure_embedded
from pipelines.train import tokenizer as pipeline_tokenizer
from pipelines.train.assets import prepare_assets
from pipelines.train.model import build_method
from pipelines.train.step import TrainStep, place
from ssl_models.tokenizer import save_tokenizer
from tests.images import jpeg

CPU = torch.device("cpu")
# a small codebook and fit, so 8 images (512 patches) are enough
SMALL_TOKENIZER = {
    "method_args": {
        "tokenizer": {"codebook_size": 32, "fit_images": 16, "fit_patches": 1024, "fit_iters": 3}
    }
}


def jpegs(n: int) -> dict:
    pictures = [jpeg(48, 40, seed) for seed in range(n)]
    return {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "image": np.array(pictures, dtype=object),
        "label": np.arange(n, dtype=np.int32),
    }


def configured(key: str, tmp_path, overrides: dict | None = None):
    """The embedded config of ``key`` and a batch of views cut by the CPU-side recipe; BEiT and
    CAE get a tokenizer fitted on those views, as the driver would."""
    tokenized = key in ("beit", "cae")
    cfg = load_config(
        key, overrides=deep_merge(SMALL_TOKENIZER if tokenized else {}, overrides or {})
    )
    views = ViewMaker(cfg.views, seed=0)(jpegs(8))
    assert set(views) == {"global", "label"} and views["global"].shape == (8, 1, 3, 32, 32)
    batch = {"global": torch.from_numpy(views["global"])}
    if tokenized:
        normalised = prepare_views(batch, cfg.views, CPU)["global"][:, 0]
        tok, stats = pipeline_tokenizer.fit_tokenizer(cfg, [normalised])
        assert stats["images"] == 8 and stats["patches"] == 8 * 64
        path = str(tmp_path / "tokenizer.pt")
        save_tokenizer(tok, path)
        tcfg = dataclasses.replace(cfg.method_args.tokenizer, path=path)
        cfg = dataclasses.replace(
            cfg, method_args=dataclasses.replace(cfg.method_args, tokenizer=tcfg)
        )
    return cfg, batch


def two_steps(cfg, batch) -> list[float]:
    torch.manual_seed(0)
    method = place(build_method(cfg), cfg, CPU)  # channels_last when configured
    step = TrainStep(method, cfg, CPU, total_steps=2, steps_per_epoch=2)
    return [step(batch, i).loss for i in range(2)]


@pytest.mark.parametrize("key", ["mae", "simmim", "beit", "cae"])
def test_two_training_steps_from_jpegs(key, tmp_path):
    cfg, batch = configured(key, tmp_path)
    assert cfg.backbone.name == "vit_tiny" and cfg.backbone.vit.patch_size == 4
    group = cfg.views.groups["global"]
    assert group.count == 1 and group.size == 32 and group.scale == (0.2, 1.0)
    assert cfg.train.channels_last
    assert all(math.isfinite(loss) for loss in two_steps(cfg, batch))
    encoder = build_method(cfg).encoder
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 80)


@pytest.mark.parametrize("key", ["mae", "simmim", "beit", "cae"])
def test_bf16_autocast(key, tmp_path):
    # the GPU path's precision (bf16 autocast), exercised on the CPU
    cfg, batch = configured(key, tmp_path, {"train": {"precision": "bf16"}})
    assert all(math.isfinite(loss) for loss in two_steps(cfg, batch))


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    train, _ = ensure_embedded(str(tmp_path_factory.mktemp("data")), 4, 1)  # 40 images
    return train


def test_prepare_tokenizer_fits_saves_and_then_reuses(tiny_shards, tmp_path, monkeypatch):
    cfg = load_config("beit", overrides=SMALL_TOKENIZER)
    run_dir = str(tmp_path / "run")
    seen = [v.shape for v in pipeline_tokenizer.training_views(cfg, tiny_shards, 16, seed=0)]
    assert sum(s[0] for s in seen) == 16 and all(s[1:] == (3, 32, 32) for s in seen)

    fitted, files = prepare_assets(cfg, tiny_shards, run_dir)
    path = f"{run_dir}/tokenizer.pt"
    assert fitted.method_args.tokenizer.path == path and files == [path]
    first = build_method(fitted).tokenizer.codebook.clone()
    assert first.abs().sum() > 0

    def no_refit(*args, **kwargs):
        raise AssertionError("refitted although the run directory holds a tokenizer")

    monkeypatch.setattr(pipeline_tokenizer, "fit_tokenizer", no_refit)
    again, _ = prepare_assets(cfg, tiny_shards, run_dir)  # a relaunched run
    assert again.method_args.tokenizer.path == path
    assert torch.equal(build_method(again).tokenizer.codebook, first)
    reuse, files = prepare_assets(fitted, tiny_shards, str(tmp_path / "other"))  # a given path
    assert reuse.method_args.tokenizer.path == path and files == [path]


def test_fitting_from_shards_is_deterministic(tiny_shards, tmp_path):
    cfg = load_config("cae", overrides=SMALL_TOKENIZER)
    a, _ = prepare_assets(cfg, tiny_shards, str(tmp_path / "a"))
    b, _ = prepare_assets(cfg, tiny_shards, str(tmp_path / "b"))
    assert torch.equal(build_method(a).tokenizer.codebook, build_method(b).tokenizer.codebook)


def test_methods_without_assets_are_untouched(tmp_path):
    cfg = load_config("mae")
    assert prepare_assets(cfg, "unused", str(tmp_path)) == (cfg, [])
