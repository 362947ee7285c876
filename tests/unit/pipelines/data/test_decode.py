"""Decoding: every mode to RGB, every EXIF orientation, extreme shapes, and bad records."""

import numpy as np
import pytest
from PIL import Image

from pipelines.data.decode import (
    BadImageError,
    check_image,
    decode_bytes,
    decode_rgb,
    open_image,
    oriented_size,
)
from pipelines.data.stream.view_config import ViewGroupConfig, ViewsConfig
from pipelines.data.stream.views import EvalViewMaker, ViewMaker
from tests.images import all_bad_records, encode, photo

RED = (200, 30, 40)


def one(data: bytes, key: str = "k") -> dict:
    return {"key": np.array([key], object), "image": np.array([data], object), "label": np.zeros(1)}


def solid(mode: str) -> bytes:
    """A 6×4 image of ``mode`` whose expected RGB value is given in MODES."""
    if mode == "1":
        return encode(Image.new("1", (6, 4), 1), "PNG")
    if mode == "L":
        return encode(Image.new("L", (6, 4), 90), "PNG")
    if mode == "LA":
        return encode(Image.new("LA", (6, 4), (90, 0)), "PNG")  # fully transparent
    if mode == "P":
        img = Image.new("P", (6, 4), 1)
        img.putpalette([0, 0, 0, *RED])
        return encode(img, "PNG")
    if mode == "P-transparent":
        img = Image.new("P", (6, 4), 0)
        img.putpalette([*RED, 0, 0, 0])
        return encode(img, "PNG", transparency=0)
    if mode == "RGBA":
        return encode(Image.new("RGBA", (6, 4), (*RED, 255)), "PNG")
    if mode == "RGBA-transparent":
        return encode(Image.new("RGBA", (6, 4), (0, 0, 0, 0)), "PNG")
    if mode == "CMYK-jpeg":
        return encode(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG", quality=95)
    if mode == "CMYK-tiff":
        return encode(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "TIFF")
    if mode == "I;16":
        return encode(Image.fromarray(np.full((4, 6), 40000, np.uint16)), "PNG")
    if mode == "I":
        return encode(Image.fromarray(np.full((4, 6), 40000, np.int32)), "TIFF")
    if mode == "F":
        return encode(Image.fromarray(np.full((4, 6), 0.5, np.float32)), "TIFF")
    if mode == "RGB-webp":
        return encode(Image.new("RGB", (6, 4), RED), "WEBP", lossless=True)
    raise ValueError(mode)


MODES = {  # expected RGB after decoding, worked out from each mode's definition
    "1": (255, 255, 255),
    "L": (90, 90, 90),
    "LA": (255, 255, 255),  # transparent onto white
    "P": RED,
    "P-transparent": (255, 255, 255),
    "RGBA": RED,
    "RGBA-transparent": (255, 255, 255),
    "CMYK-jpeg": (255, 0, 0),  # no cyan, full magenta and yellow: red
    "CMYK-tiff": (255, 0, 0),
    "I;16": (156, 156, 156),  # 40000 / 256, scaled rather than clipped to 255
    "I": (156, 156, 156),
    "F": (127, 127, 127),  # 0.5 on a [0, 1] scale
    "RGB-webp": RED,
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_decodes_to_the_expected_rgb(mode):
    img = decode_bytes(solid(mode))
    assert img.mode == "RGB" and img.size == (6, 4)
    np.testing.assert_allclose(np.asarray(img)[1, 2], MODES[mode], atol=3)
    assert check_image(solid(mode)) == (6, 4)


def quadrants(width: int, height: int) -> np.ndarray:
    """Four solid colours, one per quadrant, (H, W, 3) uint8: orientation is unambiguous."""
    img = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    img[:h, :w], img[:h, w:] = (255, 0, 0), (0, 255, 0)
    img[h:, :w], img[h:, w:] = (0, 0, 255), (255, 255, 0)
    return img


# the stored pixels for each EXIF orientation, given the displayed image (EXIF 2.3, tag 0x0112)
STORED = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],  # mirrored left-right
    3: lambda d: d[::-1, ::-1],  # rotated 180°
    4: lambda d: d[::-1],  # mirrored top-bottom
    5: lambda d: d.transpose(1, 0, 2),  # transposed (main diagonal)
    6: lambda d: np.rot90(d, 1),  # displayed after a 90° clockwise turn
    7: lambda d: d[::-1, ::-1].transpose(1, 0, 2),  # transversed (anti-diagonal)
    8: lambda d: np.rot90(d, -1),  # displayed after a 90° counter-clockwise turn
}


def assert_quadrants(decoded: np.ndarray) -> None:
    h, w = decoded.shape[:2]
    expected = quadrants(w, h)
    for y, x in (
        (h // 4, w // 4),
        (h // 4, 3 * w // 4),
        (3 * h // 4, w // 4),
        (3 * h // 4, 3 * w // 4),
    ):
        np.testing.assert_allclose(decoded[y, x], expected[y, x], atol=40)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("shrink", [1.0, 4.0])
def test_every_exif_orientation_is_applied_at_full_and_draft_size(orientation, shrink):
    display = quadrants(96, 64)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(STORED[orientation](display))
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    img = open_image(data)
    assert oriented_size(img) == (96, 64)
    decoded = np.asarray(decode_rgb(img, shrink))
    assert decoded.shape == ((64, 96, 3) if shrink == 1 else (16, 24, 3))
    assert_quadrants(decoded)


def test_views_follow_exif_orientation():
    display = quadrants(40, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(np.ascontiguousarray(STORED[6](display))), "PNG", exif=exif)
    batch = {
        "key": np.array(["k"], object),
        "image": np.array([data], object),
        "label": np.zeros(1),
    }
    view = EvalViewMaker(size=40, crop_fraction=1.0)(batch)["image"][0].transpose(1, 2, 0)
    assert_quadrants(view)


def views_config() -> ViewsConfig:
    return ViewsConfig(
        groups={
            "global": ViewGroupConfig(count=2, size=24),
            "local": ViewGroupConfig(count=2, size=8, scale=(0.05, 0.4)),
        },
        augment_device="cpu",
    )


@pytest.mark.parametrize(
    "size,fmt", [((1, 1), "PNG"), ((1, 1), "JPEG"), ((4000, 3), "JPEG"), ((2, 3000), "PNG")]
)
def test_extreme_shapes_make_views(size, fmt):
    data = encode(photo(*size), fmt)
    batch = {
        "key": np.array(["k"], object),
        "image": np.array([data], object),
        "label": np.zeros(1),
    }
    out = ViewMaker(views_config(), bad_images="strict", seed=0)(batch)
    assert out["global"].shape == (1, 2, 3, 24, 24) and out["local"].shape == (1, 2, 3, 8, 8)
    assert EvalViewMaker(16, bad_images="strict")(batch)["image"].shape == (1, 3, 16, 16)


def bad_batch() -> dict:
    bad = all_bad_records()
    good = encode(photo(40, 30), "JPEG")
    keys = ["good-0", *bad, "good-1"]
    images = [good, *bad.values(), good]
    return {
        "key": np.array(keys, object),
        "image": np.array(images, object),
        "label": np.arange(len(keys)),
    }


def test_every_bad_record_is_skipped_and_named_under_skip():
    batch = bad_batch()
    maker = ViewMaker(views_config(), seed=0)
    out = maker(batch)
    assert out["label"].tolist() == [0, len(batch["key"]) - 1]
    assert maker.skipped == list(batch["key"][1:-1])
    evaluated = EvalViewMaker(16)(batch)
    assert evaluated["label"].tolist() == [0, len(batch["key"]) - 1]


@pytest.mark.parametrize("name", sorted(all_bad_records()))
def test_each_bad_record_stops_the_strict_policy_naming_it(name):
    data = all_bad_records()[name]
    batch = {
        "key": np.array([name], object),
        "image": np.array([data], object),
        "label": np.zeros(1),
    }
    with pytest.raises(BadImageError, match=f"bad image {name}: "):
        ViewMaker(views_config(), bad_images="strict")(batch)
    with pytest.raises(BadImageError, match=f"bad image {name}: "):
        EvalViewMaker(16, bad_images="strict")(batch)
    with pytest.raises(BadImageError):
        check_image(data)


def test_a_batch_of_only_bad_records_yields_empty_arrays_of_the_right_shape():
    bad = all_bad_records()
    batch = {"key": np.array(list(bad), object), "image": np.array(list(bad.values()), object)}
    out = ViewMaker(views_config())(batch)
    assert out["global"].shape == (0, 2, 3, 24, 24) and out["label"].shape == (0,)


def test_an_image_between_the_pixel_limit_and_twice_it_is_bad(monkeypatch):
    """PIL only warns up to twice ``MAX_IMAGE_PIXELS``, then decodes PNGs at full size."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert check_image(encode(photo(25, 40), "PNG")) == (25, 40)  # exactly the limit
    over = encode(photo(40, 40), "PNG")  # 1600 pixels: PIL warns, does not refuse
    with pytest.raises(BadImageError, match="40×40 pixels is over PIL's limit of 1000"):
        check_image(over)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the check off
    assert check_image(over) == (40, 40)
