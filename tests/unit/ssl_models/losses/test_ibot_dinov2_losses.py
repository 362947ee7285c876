"""iBOT's masked-patch loss, DINOv2's KoLeo regulariser and target-driven DINO loss, the
per-sample mask sizes, and Sinkhorn over workers holding different numbers of masked patches."""

import math

import pytest
import torch

from ssl_models.backbones.masking import (
    dinov2_mask_counts,
    ibot_mask_counts,
    variable_block_masking,
)
from ssl_models.losses import (
    dino_loss,
    dino_loss_from_targets,
    ibot_loss,
    koleo_loss,
    koleo_loss_per_crop,
    masked_patch_loss,
    sinkhorn,
)
from tests.distributed_helpers import run_distributed

L3 = math.log(3.0)


def _ce(target: list[float], log_prob: list[float]) -> float:
    return -sum(t * lp for t, lp in zip(target, log_prob, strict=True))


def test_ibot_loss_known_answer_two_crops():
    # temperatures 1, centre 0; N = 2 images, L = 2 patches, K = 2
    t0 = torch.tensor([[[L3, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    s0 = torch.zeros(2, 2, 2)
    m0 = torch.tensor([[True, False], [False, False]])  # image 1 unmasked: counts 0
    t1 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [L3, 0.0]]])
    s1 = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[L3, 0.0], [0.0, L3]]])
    m1 = torch.tensor([[False, False], [True, True]])
    crop0 = _ce([0.75, 0.25], [math.log(0.5)] * 2) / 2  # one patch of image 0, / 2 images
    q, rev = [math.log(0.75), math.log(0.25)], [math.log(0.25), math.log(0.75)]
    crop1 = (_ce([0.5, 0.5], q) + _ce([0.75, 0.25], rev)) / 2 / 2  # image 1's mean, / 2
    loss = ibot_loss([s0, s1], [t0, t1], [m0, m1], torch.zeros(2), 1.0, 1.0)
    assert loss.item() == pytest.approx((crop0 + crop1) / 2, rel=1e-6)


def test_ibot_loss_centre_and_temperatures():
    t = torch.tensor([[[2 * L3, L3]]])  # minus the centre [L3, 0]: [L3, L3] -> targets [.5, .5]
    s = torch.tensor([[[0.3, 0.1]]])
    lp = torch.log_softmax(s[0, 0] / 0.2, dim=-1).tolist()
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss = ibot_loss([s], [t], [mask], torch.tensor([[[L3, 0.0]]]), 0.2, 0.5)
    assert loss.item() == pytest.approx(_ce([0.5, 0.5], lp), rel=1e-6)


def test_ibot_loss_stops_the_gradient_and_ignores_unmasked_patches():
    s = torch.randn(3, 4, 5, requires_grad=True)
    t = torch.randn(3, 4, 5, requires_grad=True)
    c = torch.randn(1, 5, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    ibot_loss([s], [t], [mask], c).backward()
    assert t.grad is None and c.grad is None
    touched = s.grad.abs().sum(-1) > 0
    assert torch.equal(touched, mask)
    # a change of the teacher at an unmasked patch changes nothing
    t2 = t.detach().clone()
    t2[1, 0] += 10
    assert ibot_loss([s], [t2], [mask], c).item() == pytest.approx(
        ibot_loss([s], [t], [mask], c).item(), rel=1e-6
    )


def test_ibot_loss_errors():
    a, m = torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="one student output, teacher output and mask"):
        ibot_loss([a, a], [a], [m], torch.zeros(6))
    with pytest.raises(ValueError, match=r"crop 0: .* must be \(N, L, K\)"):
        ibot_loss([a], [a], [torch.zeros(2, 3, dtype=torch.bool)], torch.zeros(6))
    with pytest.raises(ValueError, match=r"patch outputs must be \(N, L, K\)"):
        ibot_loss([a[0]], [a[0]], [m[0]], torch.zeros(6))
    with pytest.raises(ValueError, match="center must hold K=6"):
        ibot_loss([a], [a], [m], torch.zeros(5))


def test_masked_patch_loss_averages_per_image_then_over_images():
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)  # 2, 1, 0 masked
    student = torch.tensor([[L3, 0.0], [0.0, 0.0], [0.0, L3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    ce = [-math.log(0.75), -math.log(0.5), -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))]
    expected = ((ce[0] + ce[1]) / 2 + ce[2] + 0.0) / 3
    assert masked_patch_loss(student, targets, mask, 1.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="M = 3 masked patches"):
        masked_patch_loss(student[:2], targets[:2], mask)
    with pytest.raises(ValueError, match=r"mask must be \(N, L\)"):
        masked_patch_loss(student, targets, mask.flatten())


def test_dino_loss_from_targets_equals_dino_loss_with_its_targets():
    torch.manual_seed(0)
    s = [torch.randn(4, 6) for _ in range(4)]
    t = [torch.randn(4, 6) for _ in range(2)]
    c = torch.randn(1, 6)
    targets = [torch.softmax((x - c) / 0.04, dim=-1) for x in t]
    torch.testing.assert_close(dino_loss_from_targets(s, targets), dino_loss(s, t, c))
    q = [x.clone().requires_grad_(True) for x in targets]
    s = [x.requires_grad_(True) for x in s]
    dino_loss_from_targets(s, q).backward()
    assert all(x.grad is None for x in q) and all(
        x.grad is not None for x in s
    )  # the targets are detached
    with pytest.raises(ValueError, match="student crop 1 has shape"):
        dino_loss_from_targets([s[0], torch.randn(4, 5)], [targets[0]])


def test_koleo_known_answer():
    # unit vectors at 0, 30 and 180 degrees: neighbours 0<->30 (chord 2 sin 15°), 180 -> 30
    # (chord 2 sin 75°); scaled rows change nothing (normalised inside)
    angles = torch.tensor([0.0, 30.0, 180.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]])
    d_near, d_far = 2 * math.sin(math.radians(15)), 2 * math.sin(math.radians(75))
    expected = -(2 * math.log(d_near) + math.log(d_far)) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_pushes_neighbours_apart_and_names_bad_input():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(x).backward()
    # the gradient step (−grad) moves the two close points apart
    step = -x.grad
    before = (x[0] - x[1]).norm()
    after = ((x[0] + 0.01 * step[0]) - (x[1] + 0.01 * step[1])).norm()
    assert after > before
    with pytest.raises(ValueError, match="at least 2 samples"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"expected \(N, D\)"):
        koleo_loss(torch.randn(4))


def test_koleo_per_crop_never_pairs_the_crops_of_one_image():
    # crop 2 is crop 1 turned by 1 degree: each crop alone has the known answer above, while
    # over all rows every point's nearest neighbour would be its own other crop
    def unit(degrees):
        angles = torch.tensor(degrees) * math.pi / 180
        return torch.stack([angles.cos(), angles.sin()], dim=1)

    x = torch.cat([unit([0.0, 30.0, 180.0]), unit([1.0, 31.0, 181.0])])
    d_near, d_far = 2 * math.sin(math.radians(15)), 2 * math.sin(math.radians(75))
    per_crop = -(2 * math.log(d_near) + math.log(d_far)) / 3
    assert koleo_loss_per_crop(x, 2).item() == pytest.approx(2 * per_crop, rel=1e-5)
    across = -math.log(2 * math.sin(math.radians(0.5)))  # every neighbour 1 degree away
    assert koleo_loss(x).item() == pytest.approx(across, rel=1e-3)  # float32 on a short chord
    with pytest.raises(ValueError, match=r"expected \(2·N, D\) crop-major, got \(5, 2\)"):
        koleo_loss_per_crop(x[:5], 2)


def test_ibot_mask_counts_mask_each_image_independently():
    g = torch.Generator().manual_seed(0)
    counts = ibot_mask_counts(4000, 100, (0.1, 0.5), 0.5, g)
    masked = [c for c in counts if c]
    assert 0.45 < len(masked) / 4000 < 0.55
    assert min(masked) >= 10 and max(masked) <= 50
    assert ibot_mask_counts(10, 100, (0.1, 0.5), 0.0, g) == [0] * 10
    with pytest.raises(ValueError, match="mask ratio range"):
        ibot_mask_counts(4, 16, (0.5, 0.1), 0.5)


def test_dinov2_mask_counts_are_stratified():
    g = torch.Generator().manual_seed(0)
    counts = dinov2_mask_counts(8, 100, (0.1, 0.5), 0.5, g)
    assert sum(c > 0 for c in counts) == 4  # exactly int(8 · 0.5) images
    # the k-th masked image's ratio lies in the k-th of 4 slices of [0.1, 0.5]
    for k, c in enumerate(sorted(c for c in counts if c)):
        assert int(100 * (0.1 + 0.1 * k)) <= c <= int(100 * (0.2 + 0.1 * k))


def test_variable_block_masking_respects_each_count():
    g = torch.Generator().manual_seed(0)
    counts = [0, 3, 6, 8]
    mask = variable_block_masking(counts, (4, 4), min_block=2, generator=g)
    assert mask.shape == (4, 16) and mask.dtype == torch.bool
    got = mask.sum(1).tolist()
    assert got[0] == 0 and all(0 < n <= c for n, c in zip(got[1:], counts[1:], strict=True))
    with pytest.raises(ValueError, match=r"mask counts must lie in \[0, 16\)"):
        variable_block_masking([16], (4, 4))


def _sinkhorn_unequal(rank: int, world: int) -> torch.Tensor:
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    mine = scores[:3] if rank == 0 else scores[3:]  # 3 and 5 masked patches
    return sinkhorn(mine, 0.07, 3, gather_distributed=True)


def test_sinkhorn_codes_with_unequal_worker_batches_equal_one_process():
    # DINOv2's patch codes: workers hold different numbers of masked patches
    codes = torch.cat(run_distributed(_sinkhorn_unequal, world=2))
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(codes, sinkhorn(scores, 0.07, 3))


def _sinkhorn_one_worker_empty(rank: int, world: int) -> torch.Tensor:
    scores = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    return sinkhorn(scores[:0] if rank == 0 else scores, 0.07, 3, gather_distributed=True)


def test_sinkhorn_joins_a_worker_without_rows():
    # iBOT's patch codes when one worker's crops drew no mask: it joins with no rows
    empty, codes = run_distributed(_sinkhorn_one_worker_empty, world=2)
    scores = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    assert empty.shape == (0, 5)
    torch.testing.assert_close(codes, sinkhorn(scores, 0.07, 3))
