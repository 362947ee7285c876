"""Two-sample statistics for distribution tests (no SciPy needed)."""

import math

import numpy as np
import torch


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov two-sample test: (D, asymptotic p-value).

    D is the largest gap between the two empirical CDFs; the p-value is the Kolmogorov
    distribution's tail at the Stephens-corrected statistic (Numerical Recipes, 14.3).
    """
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    d = float(
        np.abs(
            np.searchsorted(a, grid, side="right") / len(a)
            - np.searchsorted(b, grid, side="right") / len(b)
        ).max()
    )
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def image_statistics(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image summaries of x: (N, 3, H, W) in [0, 1], each sensitive to one augmentation:
    brightness (jitter), contrast (jitter), saturation (jitter, greyscale), hue of the mean
    colour (hue jitter), blur energy (Gaussian blur: mean squared Laplacian), and the fraction of
    bright pixels (solarize moves it)."""
    x = x.double()
    maxc, minc = x.max(1).values, x.min(1).values
    saturation = torch.where(maxc > 0, (maxc - minc) / maxc.clamp_min(1e-12), 0 * maxc)
    lap = (
        4 * x[..., 1:-1, 1:-1]
        - x[..., :-2, 1:-1]
        - x[..., 2:, 1:-1]
        - x[..., 1:-1, :-2]
        - x[..., 1:-1, 2:]
    )
    mean_rgb = x.mean((2, 3))  # (N, 3)
    hue = torch.atan2(
        math.sqrt(3) * (mean_rgb[:, 1] - mean_rgb[:, 2]),
        2 * mean_rgb[:, 0] - mean_rgb[:, 1] - mean_rgb[:, 2],
    )
    stats = {
        "brightness": x.mean((1, 2, 3)),
        "contrast": x.mean(1).flatten(1).std(1),
        "saturation": saturation.mean((1, 2)),
        "hue": hue,
        "blur_energy": lap.pow(2).mean((1, 2, 3)),
        "bright_fraction": (x.mean(1) > 0.6).double().mean((1, 2)),
    }
    return {k: v.numpy() for k, v in stats.items()}


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """KS p-value per statistic of two batches of images."""
    sa, sb = image_statistics(a), image_statistics(b)
    return {k: ks_2samp(sa[k], sb[k])[1] for k in sa}
