import math

import pytest
import torch

from ssl_models.backbones import masking
from ssl_models.backbones.masking import (
    block_masking,
    gather_tokens,
    patchify,
    random_masking,
    step_generator,
    unit_masking,
    unpatchify,
    visible_and_masked,
)


def test_patchify_layout_is_maes_and_round_trips():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 2 * 3, 2 * 2 * 3)
    # patch (row 0, column 1) of image 0: pixels (0..1, 2..3), channels last within a pixel
    expected = [images[0, c, i, j] for i in (0, 1) for j in (2, 3) for c in range(3)]
    assert patches[0, 1].tolist() == [float(v) for v in expected]
    assert torch.equal(unpatchify(patches, 2, grid=(2, 3)), images)
    square = torch.randn(3, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(square, 4), 4), square)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(patches, 2)


@pytest.mark.parametrize("ratio,kept", [(0.75, 16), (0.5, 32), (0.0, 64)])
def test_random_masking_keeps_the_intended_count_and_restores_order(ratio, kept):
    g = torch.Generator().manual_seed(0)
    draw = random_masking(5, 64, ratio, g)
    assert draw.keep.shape == (5, kept)
    assert (draw.mask.sum(1) == 64 - kept).all()
    # the kept indices are exactly the unmasked positions
    for b in range(5):
        assert set(draw.keep[b].tolist()) == set(torch.nonzero(~draw.mask[b]).flatten().tolist())
    # restore inverts the shuffle: the shuffled order [kept, dropped] gathered by restore is
    # the patch order again, and its first part is exactly the kept indices
    shuffle = torch.argsort(draw.restore, dim=1)
    assert torch.equal(shuffle[:, :kept], draw.keep)
    assert torch.equal(torch.gather(shuffle, 1, draw.restore), torch.arange(64).repeat(5, 1))
    in_shuffled_order = torch.gather(draw.mask, 1, shuffle)
    assert not in_shuffled_order[:, :kept].any() and in_shuffled_order[:, kept:].all()


def test_random_masking_differs_per_sample_and_reproduces_from_a_seed():
    a = random_masking(4, 16, 0.5, torch.Generator().manual_seed(1))
    b = random_masking(4, 16, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a.mask, b.mask)
    assert len({tuple(m.tolist()) for m in a.mask}) == 4
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 16, 1.0)


def test_block_masking_counts():
    g = torch.Generator().manual_seed(0)
    loose = block_masking(64, (14, 14), 75, min_block=16, generator=g)
    counts = loose.sum(1)
    assert loose.shape == (64, 196) and (counts <= 75).all()
    assert counts.float().mean() > 70  # BEiT may stop a few short, rarely far
    exact = block_masking(64, (8, 8), 32, min_block=4, exact=True, generator=g)
    assert (exact.sum(1) == 32).all()


def neighbour_agreement(masks: torch.Tensor, side: int) -> float:
    """Fraction of the right and lower neighbours of masked patches that are masked too."""
    grid = masks.reshape(-1, side, side).float()
    pairs = (grid[:, :, :-1] * grid[:, :, 1:]).sum() + (grid[:, :-1] * grid[:, 1:]).sum()
    right_or_down = grid[:, :, :-1].sum() + grid[:, :-1].sum()
    return float(pairs / right_or_down)


def test_block_masking_is_blockwise_not_scattered():
    g = torch.Generator().manual_seed(3)
    blocks = block_masking(64, (14, 14), 75, min_block=16, generator=g)
    scattered = random_masking(64, 196, 75 / 196, g).mask
    # scattered masks agree with their neighbours at about the mask ratio (0.38); blocks mostly
    assert neighbour_agreement(scattered, 14) < 0.45
    assert neighbour_agreement(blocks, 14) > 0.7


def test_unit_masking_masks_whole_units():
    g = torch.Generator().manual_seed(0)
    mask = unit_masking(6, (8, 8), 2, 0.6, g)  # 4x4 units of 2x2 patches
    assert (mask.sum(1) == math.ceil(16 * 0.6) * 4).all()
    units = mask.reshape(6, 4, 2, 4, 2)
    assert torch.equal(units.all(4).all(2), units.any(4).any(2))  # each unit all or nothing
    with pytest.raises(ValueError, match="does not tile"):
        unit_masking(1, (8, 8), 3, 0.6)


def test_visible_and_masked_split():
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    visible, masked = visible_and_masked(mask)
    assert visible.tolist() == [[1, 2], [0, 3]] and masked.tolist() == [[0, 3], [1, 2]]
    x = torch.arange(8.0).reshape(2, 4, 1)
    assert gather_tokens(x, masked)[..., 0].tolist() == [[0.0, 3.0], [5.0, 6.0]]
    with pytest.raises(ValueError, match="equal counts"):
        visible_and_masked(torch.tensor([[True, False], [True, True]]))


def test_step_generator_differs_by_step_and_rank(monkeypatch):
    def draw(step):
        return random_masking(2, 16, 0.5, step_generator(7, step)).mask

    assert torch.equal(draw(3), draw(3))  # a resumed run redraws the same masks
    assert not torch.equal(draw(3), draw(4))
    rank0 = draw(3)
    monkeypatch.setattr(masking.distributed, "rank", lambda: 1)
    assert not torch.equal(draw(3), rank0)  # DDP ranks mask differently
