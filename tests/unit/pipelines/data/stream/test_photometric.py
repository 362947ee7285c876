"""Photometric augmentation: torchvision's semantics, and one distribution on both placements.

Known answers on fixed parameters against torchvision's functional ops; then two-sample
Kolmogorov-Smirnov tests on per-image statistics of many augmented samples: CPU side against
training side, and ours against torchvision's composed SimCLR/BYOL transforms. Each
distribution test also shows its power: the same test rejects a slightly different recipe.
"""

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from pipelines.data.stream import photometric as P
from pipelines.data.stream.view_config import PhotometricConfig, ViewGroupConfig, ViewsConfig
from pipelines.data.stream.views import ViewMaker, prepare_views
from tests.images import encode, photo
from tests.stats import compare

SIZE = 32
# 1% for the family of six statistics (Bonferroni); fixed seeds make every outcome reproducible.
# Measured: equal recipes give p >= 0.011 over three seed pairs; a recipe with one probability
# changed by 0.2 gives p <= 1e-4 on at least one statistic.
ALPHA = 0.01 / 6


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)
    texture = torch.rand(n, 3, SIZE, SIZE, generator=g)
    return (0.6 * base + 0.4 * texture).clamp(0, 1)  # (N, 3, S, S), varied colour and detail


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (P.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
        (P.adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4]),
        (P.adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.4]),
        (P.adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.07]),
    ],
)
def test_colour_adjustments_equal_torchvision_on_fixed_factors(ours, theirs, factors):
    x = images(len(factors))
    got = ours(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        # contrast and saturation blend with greyscale: torchvision weighs red 0.2989, PIL and
        # we 0.299, a difference of 1e-4 of a channel at most
        torch.testing.assert_close(got[i], theirs(x[i], f), atol=2e-4, rtol=0)


def test_grayscale_blur_and_solarize_equal_torchvision():
    x = images(3)
    torch.testing.assert_close(P.grayscale3(x), TF.rgb_to_grayscale(x, 3), atol=2e-4, rtol=0)
    torch.testing.assert_close(P.solarize(x, 0.5), TF.solarize(x, 0.5), atol=0, rtol=0)
    sigma = torch.tensor([0.1, 0.8, 2.0])
    got = P.gaussian_blur(x, sigma, 7)
    for i in range(3):
        want = TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)


def test_jitter_order_is_a_uniform_random_permutation_per_image():
    # brightness and contrast commute until clipping: strong factors on bright images clip, so
    # the two orders give different results; classify each image by the order that explains it
    cfg = PhotometricConfig(brightness=0.9, contrast=0.9, saturation=0, hue=0)
    x = (0.5 + 0.5 * images(1)).expand(2000, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = P.color_jitter(x, cfg, g)
    g.set_state(state)
    fb, fc = P._factor(2000, 0.9, g, "cpu"), P._factor(2000, 0.9, g, "cpu")
    brightness_first = P.adjust_contrast(P.adjust_brightness(x, fb), fc)
    contrast_first = P.adjust_brightness(P.adjust_contrast(x, fc), fb)

    def matches(y: torch.Tensor) -> torch.Tensor:
        return (out - y).abs().flatten(1).amax(1) < 1e-6

    a, b = matches(brightness_first), matches(contrast_first)
    assert (a | b).all()  # every image is one of the two orders
    decided = a ^ b
    assert decided.sum() > 500
    assert 0.4 < a[decided].float().mean() < 0.6  # binomial(>500, 0.5): ±0.1 is > 4 sigma


def simclr_views(augment_device: str, cfg: PhotometricConfig, seed: int) -> torch.Tensor:
    """Augmented whole-image views, through the CPU side (ViewMaker) or the training side
    (uint8 views, then prepare_views as the training step does), as floats in [0, 1]."""
    group = ViewGroupConfig(count=2, size=SIZE, scale=(1.0, 1.0), hflip_p=0, photometric=(cfg,))
    views = ViewsConfig(groups={"global": group}, augment_device=augment_device)
    source = [encode(photo(SIZE, SIZE, seed=i), "PNG") for i in range(16)] * 25  # 400 images
    batch = {"key": np.arange(400).astype(str), "image": np.array(source, object)}
    out = ViewMaker(views, seed=seed)(batch)["global"]  # (400, 2, 3, S, S) uint8
    if augment_device == "cpu":
        return torch.from_numpy(out).flatten(0, 1).float() / 255
    g = torch.Generator().manual_seed(seed)
    x = prepare_views({"global": torch.from_numpy(out)}, views, torch.device("cpu"), g)
    mean = torch.tensor(views.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(views.std).view(1, 1, 3, 1, 1)
    x = (x["global"] * std + mean).flatten(0, 1)
    return (x * 255).round() / 255  # the CPU side's uint8 rounding, so only the draw differs


SIMCLR = PhotometricConfig()
BYOL_SECOND = PhotometricConfig(blur_p=0.1, solarize_p=0.2)


@pytest.fixture(scope="module")
def byol_cpu() -> torch.Tensor:
    return simclr_views("cpu", BYOL_SECOND, seed=1)


def test_cpu_and_train_side_draw_from_the_same_distribution(byol_cpu):
    for cfg, cpu in ((SIMCLR, simclr_views("cpu", SIMCLR, seed=1)), (BYOL_SECOND, byol_cpu)):
        train = simclr_views("train", cfg, seed=2)
        p = compare(cpu, train)
        assert min(p.values()) > ALPHA, (cfg, p)


@pytest.mark.parametrize(
    "change",
    [{"jitter_p": 0.5}, {"grayscale_p": 0.4}, {"blur_p": 0.3}, {"solarize_p": 0.4}],
    ids=lambda c: next(iter(c)),
)
def test_the_distribution_test_detects_a_changed_probability(byol_cpu, change):
    other = simclr_views("train", dataclasses.replace(BYOL_SECOND, **change), seed=2)
    p = compare(byol_cpu, other)
    assert min(p.values()) < ALPHA, p


def torchvision_pipeline(cfg: PhotometricConfig) -> T.Compose:
    """The papers' composition as torchvision expresses it (SimCLR appendix A, BYOL table 6)."""
    k = P.blur_kernel_size(SIZE, cfg.blur_kernel_fraction)
    jitter = T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    return T.Compose(
        [
            T.RandomApply([jitter], p=cfg.jitter_p),
            T.RandomGrayscale(p=cfg.grayscale_p),
            T.RandomApply([T.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p),
            T.RandomSolarize(cfg.solarize_threshold, p=cfg.solarize_p),
        ]
    )


@pytest.mark.parametrize("cfg", [SIMCLR, BYOL_SECOND], ids=["simclr", "byol-view-2"])
def test_our_augmentation_draws_from_torchvisions_distribution(cfg):
    x = images(500, seed=3)
    ours = P.photometric(x, cfg, torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    pipeline = torchvision_pipeline(cfg)
    theirs = torch.stack([pipeline(img) for img in x])
    p = compare(ours, theirs)
    assert min(p.values()) > ALPHA, p
    # and the same comparison rejects a recipe that differs in one probability
    stronger = dataclasses.replace(cfg, grayscale_p=cfg.grayscale_p + 0.2)
    p = compare(P.photometric(x, stronger, torch.Generator().manual_seed(4)), theirs)
    assert min(p.values()) < ALPHA, p
