"""The diagnostic probes' own arithmetic, on cases with known answers."""

import math

import torch

from benchmarks.inpaint_baseline import avg_dist, diffusion_fill, image_mean_fill, normalised_fit
from benchmarks.mim_diagnostics import BlockFeature
from benchmarks.moco_negatives import negative_stats
from benchmarks.vit_init_probe import probe
from ssl_models.backbones import build_backbone


def tiny_vit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(
        "vit_tiny", image_size=8, patch_size=4, dim=8, depth=2, heads=2, pool="mean", **kwargs
    ).eval()


def test_negative_stats_known_answers():
    labels = torch.tensor([0, 0, 1, 1, 1])
    # every key the same vector: each negative weighs the same, so the same-class share is
    # chance, (n_c - 1) / (N - 1), and the log-sum-exp is 1 / T + ln(N - 1)
    q = torch.nn.functional.normalize(torch.ones(5, 3), dim=1)
    stats = negative_stats(q, q.clone(), labels, 0.5)
    chance = (2 * (1 / 4) + 3 * (2 / 4)) / 5
    assert math.isclose(stats["same_class_share"], chance, rel_tol=1e-6)
    assert math.isclose(stats["chance"], chance, rel_tol=1e-6)
    assert math.isclose(stats["negative_lse"], 2.0 + math.log(4), rel_tol=1e-6)
    # one direction per class: same-class keys at cosine 1, the others at 0
    e = torch.eye(2)[labels]
    stats = negative_stats(e, e, labels, 1.0)
    assert (stats["cos_self"], stats["cos_same"], stats["cos_other"]) == (1.0, 1.0, 0.0)
    # query 0 (class 0): one same-class key at e, three others at 1: share e / (e + 3)
    share_0 = math.e / (math.e + 3)
    share_2 = 2 * math.e / (2 * math.e + 2)  # class 1: two same-class keys, two others
    expected = (2 * share_0 + 3 * share_2) / 5
    assert math.isclose(stats["same_class_share"], expected, rel_tol=1e-6)
    assert math.isclose(stats["cos_qq"], 8 / 20, rel_tol=1e-6)  # 2 + 6 same-class pairs of 20


def test_block_feature_of_the_last_block_is_the_encoders_output():
    vit = tiny_vit()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(BlockFeature(vit, 2)(x), vit(x))
        assert not torch.allclose(BlockFeature(vit, 1)(x), vit(x))
        vit.pool = "cls"
        torch.testing.assert_close(BlockFeature(vit, 2, "cls")(x), vit(x))
        assert not torch.allclose(BlockFeature(vit, 1, "cls")(x), vit(x))


def test_vit_init_probe_known_answers():
    vit = tiny_vit()
    same = torch.randn(1, 3, 8, 8).expand(4, -1, -1, -1)
    assert probe(vit, same)["image_share"] < 1e-6  # identical images: all position
    assert abs(probe(vit, same)["pooled_cosine"] - 1.0) < 1e-5
    with torch.no_grad():  # residual branches that add nothing: the blocks move nothing
        for block in vit.blocks:
            for p in block.parameters():
                p.zero_()
    assert probe(vit, torch.randn(4, 3, 8, 8))["blocks_move"] < 1e-6


def test_diffusion_fill_reproduces_a_ramp_and_keeps_visible_pixels():
    # a harmonic fill is exact on a linear ramp: each hidden pixel is its neighbours' mean
    ramp = torch.arange(12.0).view(1, 1, 1, 12).expand(1, 3, 12, 12).clone()
    hidden = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    hidden[..., 3:9, 4:8] = True
    corrupted = torch.where(
        hidden, torch.full_like(ramp, 100.0), ramp
    )  # the fill must not read these
    filled = diffusion_fill(corrupted, hidden, iterations=2000)
    assert torch.allclose(filled, ramp, atol=1e-3)
    noisy = torch.randn(2, 3, 12, 12)
    filled = diffusion_fill(noisy, hidden.expand(2, 1, 12, 12), iterations=5)
    assert torch.equal(filled[~hidden.expand(2, 3, 12, 12)], noisy[~hidden.expand(2, 3, 12, 12)])
    # the image-mean fill puts each channel's visible mean in every hidden pixel
    mean_fill = image_mean_fill(noisy, hidden.expand(2, 1, 12, 12))
    visible_mean = noisy[:, :, ~hidden[0, 0]].mean(-1)  # (2, 3)
    assert torch.allclose(mean_fill[:, :, 5, 5], visible_mean, atol=1e-6)


def test_normalised_fit_known_answers():
    target = torch.randn(2, 4, 6)
    mask = torch.ones(2, 4)
    # an affine copy of the target (positive gain) normalises to the target's own normalisation
    fit = normalised_fit(3 * target + 1, target, mask)
    normalised = (target - target.mean(-1, keepdim=True)) / (
        target.var(-1, keepdim=True) + 1e-6
    ) ** 0.5
    assert torch.allclose(fit, normalised, atol=1e-4)
    # a constant patch normalises to 0: the loss of predicting nothing
    assert torch.allclose(normalised_fit(torch.zeros(2, 4, 6), target, mask), torch.zeros(2, 4, 6))


def test_avg_dist_known_answer():
    # a hidden 3x3 block: its 8 outer pixels are 1 from a visible one, its centre 2
    hidden = torch.zeros(2, 7, 7, dtype=torch.bool)
    hidden[:, 2:5, 2:5] = True
    assert math.isclose(avg_dist(hidden), 10 / 9, rel_tol=1e-6)
    hidden[1] = False
    hidden[1, 0, 0] = True  # one hidden corner pixel, 1 from its neighbours: (10 + 1) / 10
    assert math.isclose(avg_dist(hidden), 11 / 10, rel_tol=1e-6)


def test_vit_position_cost_times_every_scheme_against_sincos(capsys):
    from benchmarks.vit_position_cost import main

    toy = "--image 8 --dim 8 --depth 1 --heads 2 --batch 2 --rounds 2 --steps 1"
    main(toy.split())
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows] == ["sincos", "learned", "relative"]
    assert rows[0].endswith("×1.00 sin-cos")  # its own rounds over themselves


def test_shortcut_probe_labelings_and_a_colour_encoder():
    from benchmarks.shortcut_probe import labelings, majority_share, pixels, scores
    from pipelines.config import load_config

    cfg = load_config("simclr")
    mean = torch.tensor(cfg.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 3, 1, 1)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # image i: channel i % 3 at level 0.3, 0.6 or 0.9 (by i // 3 % 3), the others at 0.1
        x = torch.full((n, 3, 4, 4), 0.1)
        for i in range(n):
            x[i, i % 3] = 0.3 * (1 + i // 3 % 3)
        return (x - mean) / std, torch.arange(n) % 10

    bank, query = images(90), images(45)
    torch.testing.assert_close(pixels(cfg, bank[0])[4, :, 0, 0], torch.tensor([0.1, 0.6, 0.1]))
    labels = labelings(cfg, bank, query)
    assert torch.equal(labels["colour"][0], torch.arange(90) % 3)
    # within each colour, the level orders the luma; across colours green's weight dominates
    luma = torch.tensor([0.299, 0.587, 0.114])
    level = 0.3 * (1 + torch.arange(90) // 3 % 3)
    expected = 0.1 + (level - 0.1) * luma[torch.arange(90) % 3]
    edges = torch.quantile(expected, torch.tensor([1 / 3, 2 / 3]))
    assert torch.equal(labels["brightness"][0], torch.bucketize(expected, edges))
    assert majority_share(labels["colour"][1]) == 1 / 3

    class MeanColour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return pixels(cfg, x).mean((2, 3)) - 0.1  # the lit channel's direction

    s = scores(MeanColour(), bank, query, labels)
    assert s["colour"] == 1.0
    assert s["class"] < 0.5  # the class (i % 10) is independent of i % 3 and i // 3 % 3
