import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError
from pipelines.data.stream.jigsaw_permutations import hamming_distances, permutation_set
from pipelines.data.stream.pretext_views import NEIGHBOURS
from pipelines.data.stream.view_config import (
    JigsawViewsConfig,
    PhotometricConfig,
    RelativeLocViewsConfig,
    ViewGroupConfig,
    ViewsConfig,
)
from pipelines.data.stream.views import view_maker

NO_COLOUR = (PhotometricConfig(jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0),)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def noise_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encoded(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "JPEG")


def coordinates(side: int) -> np.ndarray:
    """An image whose red channel is the column and green channel the row of each pixel."""
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)


def batch_of(images: list[bytes]) -> dict:
    return {
        "key": np.array([f"k{i}" for i in range(len(images))], dtype=object),
        "image": np.array(images, dtype=object),
        "label": np.arange(len(images), dtype=np.int32),
    }


def views_for(recipe: str, size: int, **settings) -> ViewsConfig:
    group = {"rotation": "global", "relative_loc": "patches", "jigsaw": "tiles"}[recipe]
    count = {"rotation": 4, "relative_loc": 2, "jigsaw": 9}[recipe]
    g = ViewGroupConfig(
        count=count, size=size, scale=(1.0, 1.0), hflip_p=0.0, photometric=NO_COLOUR
    )
    extra = {}
    if recipe == "relative_loc":
        extra["relative_loc"] = RelativeLocViewsConfig(**settings)
    if recipe == "jigsaw":
        extra["jigsaw"] = JigsawViewsConfig(**settings)
    return ViewsConfig(recipe=recipe, groups={group: g}, **extra)


RECIPES = [
    ("rotation", "global", (4, 3, 12, 12), "rotation", (4,)),
    ("relative_loc", "patches", (2, 3, 12, 12), "position", ()),
    ("jigsaw", "tiles", (9, 3, 12, 12), "permutation", ()),
]


@pytest.mark.parametrize("recipe, group, view_shape, target, target_shape", RECIPES)
@pytest.mark.parametrize("augment_device", ["cpu", "train"])
def test_shapes_dtypes_labels_and_bad_images(
    recipe, group, view_shape, target, target_shape, augment_device
):
    settings = {"gap": 6, "jitter": 1} if recipe == "relative_loc" else {}
    if recipe == "jigsaw":
        settings = {"cell": 14, "permutations": 10, "channel_jitter": 1}
    views = views_for(recipe, 12, **settings)
    views = ViewsConfig(**{**views.__dict__, "augment_device": augment_device})
    images = [noise_jpeg(50, 40, s) for s in range(3)] + [b"not an image"]
    out = view_maker(views, seed=0)(batch_of(images))
    assert out[group].dtype == np.uint8 and out[group].shape == (3, *view_shape)
    assert out[target].dtype == np.int64 and out[target].shape == (3, *target_shape)
    assert out["label"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="bad image k3"):
        view_maker(views, bad_images="strict")(batch_of(images))
    empty = view_maker(views)(batch_of([b""]))
    assert empty[group].shape == (0, *view_shape) and empty[target].shape == (0, *target_shape)


def test_rotation_view_k_is_view_0_rotated_by_k_quarter_turns():
    views = views_for("rotation", 16)
    out = view_maker(views, seed=1)(batch_of([noise_jpeg(40, 30, s) for s in range(2)]))
    x = torch.from_numpy(out["global"])
    for k in range(4):
        assert torch.equal(torch.rot90(x[:, 0], k, dims=(-2, -1)), x[:, k])
    assert out["rotation"].tolist() == [[0, 1, 2, 3]] * 2
    assert not torch.equal(x[:, 0], x[:, 1])


@pytest.mark.parametrize("jitter", [0, 2])
def test_relative_location_targets_match_the_geometry(jitter):
    p, gap = 8, 4
    step = p + gap
    side = 3 * p + 2 * gap + 2 * jitter  # the region is the whole image, unresized
    views = views_for("relative_loc", p, gap=gap, jitter=jitter, drop_channels=False)
    maker = view_maker(views, seed=2)
    seen = set()
    for _ in range(40):
        out = maker(batch_of([encoded(coordinates(side))]))
        position = int(out["position"][0])
        seen.add(position)
        for patch, (row, col) in zip(
            out["patches"][0], ((1, 1), NEIGHBOURS[position]), strict=True
        ):
            x0, y0 = int(patch[0, 0, 0]), int(patch[1, 0, 0])  # top-left pixel's coordinates
            assert (
                abs(x0 - (jitter + col * step)) <= jitter
                and abs(y0 - (jitter + row * step)) <= jitter
            )
            # a straight, unresampled cut: coordinates grow by one per pixel
            assert np.array_equal(patch[0], x0 + np.arange(p)[None, :].repeat(p, 0))
            assert np.array_equal(patch[1], y0 + np.arange(p)[:, None].repeat(p, 1))
    assert seen == set(range(8))
    # the documented class order (relative_loc_loss): row-major, the centre skipped
    assert tuple((r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)) == NEIGHBOURS


def test_colour_dropping_keeps_one_channel_and_neutralises_the_others():
    rng = np.random.default_rng(0)
    side = 3 * 8 + 2 * 4
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    views = views_for("relative_loc", 8, gap=4, jitter=0, drop_channels=True)
    out = view_maker(views, seed=3)(batch_of([encoded(image)]))
    centre = out["patches"][0, 0].astype(int)
    source = image[12:20, 12:20].transpose(2, 0, 1).astype(int)
    kept = [c for c in range(3) if np.array_equal(centre[c], source[c])]
    assert len(kept) == 1
    for c in set(range(3)) - set(kept):
        mean = 255 * views.mean[c]
        assert abs(centre[c].mean() - mean) < 1.5 and centre[c].std() < 3


def test_jigsaw_tiles_reassembled_by_the_inverse_permutation_give_the_image():
    t = 8
    views = views_for("jigsaw", t, cell=t, permutations=20, channel_jitter=0, grayscale_p=0.0)
    image = np.random.default_rng(4).integers(0, 255, (3 * t, 3 * t, 3), dtype=np.uint8)
    maker = view_maker(views, seed=5)
    perms = permutation_set(20, 0, "average")
    targets = set()
    for _ in range(10):
        out = maker(batch_of([encoded(image)]))
        index = int(out["permutation"][0])
        targets.add(index)
        shuffled = out["tiles"][0]  # (9, 3, t, t), slot i holds tile perms[index][i]
        tiles = shuffled[np.argsort(perms[index])]  # back in row-major grid order
        grid = tiles.reshape(3, 3, 3, t, t).transpose(0, 3, 1, 4, 2).reshape(3 * t, 3 * t, 3)
        assert np.array_equal(grid, image)
    assert len(targets) > 1


def test_jigsaw_tiles_stay_inside_their_cells_with_channel_jitter():
    t, cell, j = 8, 12, 2
    views = views_for("jigsaw", t, cell=cell, permutations=10, channel_jitter=j, grayscale_p=0.0)
    out = view_maker(views, seed=6)(batch_of([encoded(coordinates(3 * cell))]))
    perm = permutation_set(10, 0, "average")[int(out["permutation"][0])]
    for slot, tile in enumerate(out["tiles"][0]):
        row, col = divmod(int(perm[slot]), 3)
        x0, y0 = int(tile[0, 0, 0]), int(tile[1, 0, 0])  # red: column, green: row
        assert col * cell <= x0 and x0 + t <= (col + 1) * cell
        assert row * cell <= y0 and y0 + t <= (row + 1) * cell


def test_jigsaw_grayscale_probability_one_gives_grey_tiles():
    views = views_for("jigsaw", 8, cell=10, permutations=10, channel_jitter=0, grayscale_p=1.0)
    tiles = view_maker(views, seed=7)(batch_of([noise_jpeg(40, 40)]))["tiles"]
    assert np.array_equal(tiles[:, :, 0], tiles[:, :, 1]) and np.array_equal(
        tiles[:, :, 1], tiles[:, :, 2]
    )


def test_permutation_sets_have_their_size_and_hamming_distances():
    for selection, min_distance in (("average", 2), ("maximin", 6)):
        perms = permutation_set(100, 0, selection)
        assert perms.shape == (100, 9)
        assert all(sorted(p) == list(range(9)) for p in perms.tolist())
        d = hamming_distances(perms)[~np.eye(100, dtype=bool)]
        assert d.min() == min_distance
        # the paper's table 1: an average Hamming distance of 8.08 for 100 permutations
        assert d.mean() == pytest.approx(8.08, abs=0.005)
    assert np.array_equal(permutation_set(30, 1), permutation_set(30, 1))
    assert not np.array_equal(permutation_set(30, 1), permutation_set(30, 2))
    with pytest.raises(ValueError, match="size must be in"):
        permutation_set(0)


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["method_args.num_permutations=50"], "must equal views.jigsaw.permutations = 100"),
        (["views.jigsaw.cell=16"], "'views.jigsaw.cell': 16 cannot hold a tile of 16"),
        (["views.groups.tiles.count=4"], r"'views.groups.tiles.count': .* writes 9 views"),
    ],
)
def test_recipe_settings_are_checked_when_the_config_is_built(pairs, message):
    with pytest.raises(ConfigError, match=message):
        load_config("jigsaw", overrides=parse_set(pairs))
