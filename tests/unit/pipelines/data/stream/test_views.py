import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data.stream.view_config import PhotometricConfig, ViewGroupConfig, ViewsConfig
from pipelines.data.stream.views import EvalViewMaker, ViewMaker, random_resized_crop_box
from tests.images import jpeg


def batch_of(images: list[bytes]) -> dict:
    return {
        "key": np.array([f"k{i}" for i in range(len(images))], dtype=object),
        "image": np.array(images, dtype=object),
        "label": np.arange(len(images), dtype=np.int32),
    }


@pytest.mark.parametrize("augment_device", ["cpu", "train"])
def test_view_recipe_emits_uint8_views_of_the_configured_shape(augment_device):
    views = ViewsConfig(
        groups={
            "global": ViewGroupConfig(count=2, size=24),
            "local": ViewGroupConfig(count=3, size=12, scale=(0.05, 0.4)),
        },
        augment_device=augment_device,
    )
    out = ViewMaker(views, seed=0)(batch_of([jpeg(50, 40, s) for s in range(4)]))
    assert out["global"].dtype == np.uint8 and out["global"].shape == (4, 2, 3, 24, 24)
    assert out["local"].dtype == np.uint8 and out["local"].shape == (4, 3, 3, 12, 12)
    assert out["label"].tolist() == [0, 1, 2, 3]


def test_views_of_one_image_differ_and_reproduce_with_a_seed():
    views = ViewsConfig(groups={"global": ViewGroupConfig(count=2, size=16)})
    batch = batch_of([jpeg(64, 64)])
    a = ViewMaker(views, seed=3)(batch)["global"]
    b = ViewMaker(views, seed=3)(batch)["global"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0, 0], a[0, 1])


def test_bad_images_are_skipped_by_default_and_stop_the_strict_policy():
    views = ViewsConfig(groups={"global": ViewGroupConfig(count=2, size=16)})
    batch = batch_of([jpeg(32, 32), b"", b"not an image", jpeg(32, 32)[:100]])
    out = ViewMaker(views)(batch)
    assert out["global"].shape[0] == 1 and out["label"].tolist() == [0]
    with pytest.raises(ValueError, match="bad image k1"):
        ViewMaker(views, bad_images="strict")(batch)


@pytest.mark.parametrize("size", [(500, 375), (1, 1), (3000, 7)])
def test_crop_box_stays_inside_the_image(size):
    rng = np.random.default_rng(0)
    w, h = size
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(w, h, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_draft_decode_matches_full_decode_closely():
    # a large smooth image: the half-scale JPEG decode must not change what a small crop sees
    x = np.linspace(0, 255, 800)
    img = Image.fromarray(np.stack([np.add.outer(x, x) / 2] * 3, -1).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    group = ViewGroupConfig(
        count=1,
        size=64,
        scale=(0.9, 1.0),
        hflip_p=0.0,
        photometric=(PhotometricConfig(jitter_p=0, grayscale_p=0, blur_p=0),),
    )
    batch = batch_of([buf.getvalue()])
    drafted = ViewMaker(ViewsConfig(groups={"g": group}, augment_device="cpu"), seed=1)(batch)
    full = ViewMaker(
        ViewsConfig(groups={"g": group}, augment_device="cpu", draft_decode=False), seed=1
    )(batch)
    diff = np.abs(drafted["g"].astype(int) - full["g"].astype(int))
    assert diff.mean() < 2.0


def test_eval_view_is_a_centre_crop():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # a white centre square of 40 × 40
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = EvalViewMaker(size=20, crop_fraction=1.0)(batch_of([buf.getvalue()]))
    assert out["image"].shape == (1, 3, 20, 20)
    # only the white centre survives; the resampling filter may touch the black just outside
    assert out["image"][..., 1:-1].min() == 255 and out["image"].mean() > 245


def test_photometric_keeps_range_and_identity_when_disabled():
    from pipelines.data.stream.photometric import photometric

    x = torch.rand(6, 3, 16, 16)
    off = PhotometricConfig(jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)
    assert torch.equal(photometric(x, off), x)
    y = photometric(x, PhotometricConfig(jitter_p=1, grayscale_p=0.5, blur_p=1, solarize_p=0.5))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
