"""Patches and masks for masked image modeling: which patches a method hides, and how.

Masks are ``(B, L)`` bool tensors over the row-major patch grid, True = masked. The strategies:

- ``random_masking``: MAE's per-sample random shuffle, keeping the first ``L·(1 - ratio)``;
- ``block_masking``: BEiT's blockwise masking (rectangles of at least 16 patches, aspect 0.3-3.3);
- ``unit_masking``: SimMIM's masking of random square units larger than a patch (32 px);
- ``variable_block_masking``: blockwise with a size per sample, drawn by ``ibot_mask_counts``
  (iBOT) or ``dinov2_mask_counts`` (DINOv2).

Random draws come from an explicit ``torch.Generator`` (CPU); :func:`step_generator` seeds one per
step and per rank, so DDP workers draw different masks and a resumed run draws the same ones.
"""

import math
import random
from typing import NamedTuple

import torch

from ssl_models import distributed


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: (N, C, H, W) -> patches (N, L, p·p·C), row-major patches, MAE's pixel order
    (row, column, channel) inside a patch."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of patch_size {p}")
    x = images.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (N, h, w, p, p, C)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid: tuple[int, int] | None = None, channels: int = 3
) -> torch.Tensor:
    """The inverse of :func:`patchify`: (N, L, p·p·C) -> (N, C, H, W); a square grid unless
    ``grid`` = (rows, columns) is given."""
    n, length, dim = patches.shape
    p = patch_size
    if dim != p * p * channels:
        raise ValueError(f"patch dimension {dim} != {p}·{p}·{channels}")
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != length:
        raise ValueError(f"grid {grid} does not hold {length} patches")
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


class RandomMask(NamedTuple):
    keep: torch.Tensor  # (B, K) long: indices of the visible patches, in shuffled order
    mask: torch.Tensor  # (B, L) bool: True = masked
    restore: torch.Tensor  # (B, L) long: puts [visible, masked] back into patch order


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> RandomMask:
    """MAE's per-sample random masking (He et al. 2022, arXiv:2111.06377): shuffle the patches
    of each sample by sorting uniform noise, keep the first ``int(L·(1 - ratio))``.

    ``torch.gather(concat([visible, masked]), 1, restore)`` is the patch order again.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep_count = int(num_patches * (1 - mask_ratio))
    if keep_count < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no patch of {num_patches}")
    noise = torch.rand(batch, num_patches, generator=generator)
    shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(batch, num_patches)
    mask[:, :keep_count] = 0
    mask = torch.gather(mask, 1, restore).bool()  # back in patch order
    return RandomMask(shuffle[:, :keep_count].to(device), mask.to(device), restore.to(device))


def _block_mask_one(
    rng: random.Random,
    grid: tuple[int, int],
    num_masked: int,
    min_block: int,
    max_block: int,
    log_aspect: tuple[float, float],
) -> torch.Tensor:
    """BEiT's MaskingGenerator for one image: add random rectangles until ``num_masked`` patches
    are covered or ten tries in a row add nothing."""
    h, w = grid
    mask = torch.zeros(h, w, dtype=torch.bool)
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            bh = round(math.sqrt(area * aspect))
            bw = round(math.sqrt(area / aspect))
            if bw < w and bh < h:
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                region = mask[top : top + bh, left : left + bw]
                new = bh * bw - int(region.sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask.flatten()


def block_masking(
    batch: int,
    grid: tuple[int, int],
    num_masked: int,
    min_block: int = 16,
    min_aspect: float = 0.3,
    max_block: int | None = None,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT's blockwise masking (Bao et al. 2022, arXiv:2106.08254, algorithm 1) -> (B, L) bool.

    Rectangles of ``min_block`` to ``max_block`` patches with aspect ratio in
    [min_aspect, 1 / min_aspect] are added until ``num_masked`` patches are masked; like BEiT a
    sample may end a few short when no rectangle fits. ``exact`` tops every sample up with random
    patches to exactly ``num_masked`` (CAE's encoder takes the same number of visible patches in
    every sample).
    """
    h, w = grid
    if not 0 < num_masked < h * w:
        raise ValueError(f"num_masked must be in (0, {h * w}), got {num_masked}")
    if min_block < 1 or not 0 < min_aspect <= 1:
        raise ValueError(f"min_block >= 1 and 0 < min_aspect <= 1, got {min_block}, {min_aspect}")
    seed = int(torch.randint(2**62, (1,), generator=generator))
    rng = random.Random(seed)  # Python's RNG: thousands of scalar draws per batch
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    masks = []
    for _ in range(batch):
        mask = _block_mask_one(
            rng, grid, num_masked, min_block, max_block or num_masked, log_aspect
        )
        short = num_masked - int(mask.sum())
        if exact and short > 0:
            free = torch.nonzero(~mask).flatten().tolist()
            mask[rng.sample(free, short)] = True
        masks.append(mask)
    return torch.stack(masks)


def variable_block_masking(
    counts: list[int],
    grid: tuple[int, int],
    min_block: int = 4,
    min_aspect: float = 0.3,
    max_block: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT's blockwise masking with its own patch count per sample (iBOT, DINOv2): sample i
    gets ``counts[i]`` masked patches (0: none) -> (B, L) bool. Blocks of ``min_block`` to
    ``max_block`` (default: the sample's count) patches, aspect in [min_aspect, 1 / min_aspect].
    """
    h, w = grid
    if any(not 0 <= c < h * w for c in counts):
        raise ValueError(f"mask counts must lie in [0, {h * w}), got {counts}")
    if min_block < 1 or not 0 < min_aspect <= 1:
        raise ValueError(f"min_block >= 1 and 0 < min_aspect <= 1, got {min_block}, {min_aspect}")
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    masks = [
        _block_mask_one(rng, grid, c, min_block, max_block or c, log_aspect)
        if c
        else torch.zeros(h * w, dtype=torch.bool)
        for c in counts
    ]
    return torch.stack(masks) if masks else torch.zeros(0, h * w, dtype=torch.bool)


def ibot_mask_counts(
    batch: int,
    num_patches: int,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> list[int]:
    """iBOT's per-image mask sizes (Zhou et al. 2022, arXiv:2111.07832; ``--pred_ratio 0 0.3
    --pred_ratio_var 0 0.2``): each image independently is masked with ``probability``, at a
    ratio uniform in ``ratio_range``; the others keep every patch."""
    _check_ratios(ratio_range, probability)
    lo, hi = ratio_range
    masked = torch.rand(batch, generator=generator) < probability
    ratios = lo + (hi - lo) * torch.rand(batch, generator=generator)
    return [round(float(r) * num_patches) if m else 0 for m, r in zip(masked, ratios, strict=True)]


def dinov2_mask_counts(
    batch: int,
    num_patches: int,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> list[int]:
    """DINOv2's per-image mask sizes (Oquab et al. 2024, arXiv:2304.07193; the reference's
    ``collate_data_and_cast``): exactly ``int(batch · probability)`` images are masked, the k-th
    at a ratio uniform in the k-th of as many equal slices of ``ratio_range`` (stratified), then
    the images are shuffled."""
    _check_ratios(ratio_range, probability)
    lo, hi = ratio_range
    n_masked = int(batch * probability)
    edges = torch.linspace(lo, hi, n_masked + 1).tolist()
    u = torch.rand(n_masked, generator=generator).tolist()
    bins = zip(edges[:-1], edges[1:], u, strict=True)
    counts = [int(num_patches * (a + (b - a) * x)) for a, b, x in bins]
    counts += [0] * (batch - n_masked)
    order = torch.randperm(batch, generator=generator).tolist()
    return [counts[i] for i in order]


def _check_ratios(ratio_range: tuple[float, float], probability: float) -> None:
    lo, hi = ratio_range
    if not 0 <= lo <= hi < 1 or not 0 <= probability <= 1:
        raise ValueError(
            f"mask ratio range must satisfy 0 <= lo <= hi < 1 and probability lie in [0, 1], "
            f"got {ratio_range} and {probability}"
        )


def unit_masking(
    batch: int,
    grid: tuple[int, int],
    unit: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimMIM's random masking of square units of ``unit`` × ``unit`` patches (Xie et al. 2022,
    arXiv:2111.09886; 32-pixel units over 16-pixel patches): ``ceil(units · ratio)`` units per
    sample -> (B, L) bool over patches."""
    h, w = grid
    if unit < 1 or h % unit or w % unit:
        raise ValueError(f"mask unit of {unit} patches does not tile the {h}x{w} patch grid")
    uh, uw = h // unit, w // unit
    count = math.ceil(uh * uw * mask_ratio)
    if not 0 < count < uh * uw:
        raise ValueError(f"mask_ratio {mask_ratio} masks {count} of {uh * uw} units")
    order = torch.argsort(torch.rand(batch, uh * uw, generator=generator), dim=1)
    units = torch.zeros(batch, uh * uw, dtype=torch.bool)
    units.scatter_(1, order[:, :count], True)
    units = units.reshape(batch, uh, 1, uw, 1).expand(batch, uh, unit, uw, unit)
    return units.reshape(batch, h * w)


def visible_and_masked(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask: (B, L) bool with the same count per row -> indices (B, L - M) of the visible and
    (B, M) of the masked patches, each in patch order."""
    counts = mask.sum(dim=1)
    if mask.ndim != 2 or (counts != counts[0]).any():
        raise ValueError("visible_and_masked needs a (B, L) mask with equal counts per sample")
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first
    visible = mask.shape[1] - int(counts[0])
    return order[:, :visible], order[:, visible:]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, L, D), index: (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step, rank): DDP ranks draw different masks (a shared
    ``torch.manual_seed`` would give every rank the same ones) and a resumed run repeats them."""
    mixed = (seed * 1_000_003 + step) * 65_537 + distributed.rank()
    return torch.Generator().manual_seed(mixed % 2**63)
