"""Two-sample statistics of augmented images, compared with SciPy's Kolmogorov–Smirnov test."""

import math

import numpy as np
import torch
from scipy.stats import ks_2samp


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
    """Two-sample KS p-value per statistic of two batches of images."""
    sa, sb = image_statistics(a), image_statistics(b)
    return {k: float(ks_2samp(sa[k], sb[k]).pvalue) for k in sa}
