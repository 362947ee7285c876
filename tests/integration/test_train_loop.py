"""The real worker loop under TorchTrainer: 2 CPU workers, Ray Data input, checkpoint resume."""

import math

import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import to_dict
from pipelines.data.stream.source import training_dataset
from pipelines.data.synthetic import ensure_embedded
from pipelines.train.checkpoint import load_state
from pipelines.train.trainer import build_trainer

pytestmark = pytest.mark.integration


def tiny_config(tmp_path, epochs, *pairs):
    return load_config(
        overrides=parse_set(
            [
                "backbone.width=0.125",
                "method_args.proj_hidden_dim=64",
                "train.batch_size=32",
                f"train.epochs={epochs}",
                "train.workers=2",
                "train.cpus_per_worker=1",
                "train.drain_check_steps=1",  # Ray Train's preemption barrier at every step
                f"train.storage={tmp_path / 'runs'}",
                "data.embedded_train_per_class=8",
                "data.embedded_test_per_class=2",
                f"data.cache_dir={tmp_path / 'data'}",
                *pairs,
            ]
        )
    )


def fit(cfg, tmp_path, name, **counters):
    train_path, _ = ensure_embedded(cfg.data.cache_dir, 8, 2)
    ds, manifest = training_dataset(cfg, train_path, *counters.values())
    steps_per_epoch = (manifest.total_rows // 2) // 16
    loop_config = {"cfg": to_dict(cfg), "steps_per_epoch": steps_per_epoch, "run_dir": "x"}
    loop_config.update(counters)
    result = build_trainer(cfg, ds, loop_config, name, str(tmp_path / "runs")).fit()
    return result, steps_per_epoch


def test_two_workers_train_report_and_resume(ray_local, tmp_path):
    result, spe = fit(tiny_config(tmp_path, epochs=1), tmp_path, "resume-me")
    assert spe == 2  # 80 images, 2 workers × 16
    assert result.metrics["epoch"] == 1 and result.metrics["step"] == spe  # epochs count from 1
    assert result.metrics["resumed_from_step"] == 0
    assert math.isfinite(result.metrics["loss"]) and result.metrics["loss"] > 0
    with result.checkpoint.as_directory() as d:
        first = load_state(d)
    assert first["step"] == spe and first["epoch"] == 1

    # same name and storage, a longer budget: continues from the checkpoint, not from scratch
    result, _ = fit(tiny_config(tmp_path, epochs=2), tmp_path, "resume-me")
    assert result.metrics["resumed_from_step"] == spe
    assert result.metrics["epoch"] == 2 and result.metrics["step"] == 2 * spe
    with result.checkpoint.as_directory() as d:
        second = load_state(d)
    assert second["step"] == 2 * spe
    changed = [k for k in first["model"] if not first["model"][k].equal(second["model"][k])]
    assert changed, "the resumed run did not train"


@pytest.mark.slow
def test_views_decoded_on_the_training_device(ray_local, tmp_path):
    """views.decode_device: train through the real loop: Ray Data sends the embedded set's JPEG
    bytes and crop geometry, the workers decode them, train and report; nothing falls back."""
    from pipelines.data.stream.bad_images import bad_image_count, create_counter

    cfg = tiny_config(tmp_path, 1, "views.decode_device=train")
    counters = {
        "bad_images_counter": create_counter(),
        "decode_fallbacks_counter": create_counter(kind="decode-fallbacks"),
    }
    result, spe = fit(cfg, tmp_path, "on-device", **counters)
    assert result.metrics["step"] == spe == 2
    assert math.isfinite(result.metrics["loss"]) and result.metrics["loss"] > 0
    assert [bad_image_count(c) for c in counters.values()] == [0, 0]
