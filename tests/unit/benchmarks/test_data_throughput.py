"""The per-recipe cost measurement of benchmarks/data_throughput.py at toy size: what it reads from
the recipes, and that the decode timer leaves the view code as it found it."""

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks import data_throughput as dt
from pipelines.data.stream import views as views_module


def jpegs(n: int, size: tuple[int, int] = (120, 90)) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def test_swav_paper_views_and_phases():
    costs = dt.recipe_costs("swav", jpegs(3))
    assert costs["views"] == "2×224 + 6×96"
    assert costs["photos"] == 3
    assert costs["mean_megapixels"] == pytest.approx(120 * 90 / 1e6, abs=1e-3)
    ms = costs["ms_per_image"]
    assert ms["decode"] > 0 and ms["geometry"] > 0 and ms["photometric"] > 0
    rates = costs["images_per_sec_per_core"]
    assert rates["photometric_on_gpu"] > rates["photometric_on_cpu"]
    # the two rates are the phases' sums (rounding aside)
    assert 1000 / rates["photometric_on_cpu"] == pytest.approx(sum(ms.values()), rel=0.02)


def test_set_overrides_reach_the_recipe():
    costs = dt.recipe_costs("dino", jpegs(1), sets=["views.groups.local.count=10"])
    assert costs["views"] == "2×224 + 10×96"


def test_decode_timer_counts_and_restores():
    originals = (views_module.open_image, views_module.decode_rgb)
    spent = [0.0]
    with dt.timing_decode(spent):
        views_module.decode_rgb(views_module.open_image(jpegs(1)[0]))
    assert spent[0] > 0
    assert (views_module.open_image, views_module.decode_rgb) == originals


def test_pretext_recipes_are_refused():
    with pytest.raises(SystemExit, match="rotnet: --per-recipe measures crop recipes"):
        dt.recipe_costs("rotnet", jpegs(1))
