"""How far SimMIM's pretext task is solved without learning: model-free inpainters' losses.

SimMIM hides 2x2-patch units of the image and regresses the hidden pixels (L1 on the normalised
image); MAE regresses per-patch normalised pixels (MSE). This probe draws the laptop profile's
views of CIFAR-10 test images (RandomResizedCrop(0.2, 1) to 32 pixels, flip), masks them with the
method's own masking (``unit_masking``) and scores three inpainters that learn nothing, with the
methods' own losses: SimMIM's L1 (``simmim_loss``) on the fill itself, and MAE's MSE on per-patch
normalised targets (``mae_loss``) on the fill's patches normalised the same way and scaled by the
one factor that fits best over the whole sample (a constant fill predicts 0 there):

- ``mean colour``: every hidden pixel at the dataset mean (0 after normalisation);
- ``image mean``: every hidden pixel at its image's mean visible colour;
- ``diffusion``: the hidden pixels filled by repeated 4-neighbour averaging from the visible
  ones (a harmonic fill: smooth interpolation of the surrounding colours).

A training loss near the diffusion fill's says the network solves the task about as well as
interpolating colours, which needs no features of what is in the image.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.inpaint_baseline \
        --cifar ../shared/data/cifar10-jpeg.tar.gz
"""

import argparse

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from benchmarks.quality_data import cifar_test_sample
from pipelines.config import IMAGENET_MEAN, IMAGENET_STD
from ssl_models.backbones.masking import patchify, unit_masking
from ssl_models.losses import mae_loss, simmim_loss

MASKINGS = ["2:0.6", "1:0.75"]  # unit (patches):ratio; the profile's SimMIM and MAE, patch 4


def avg_dist(hidden: torch.Tensor) -> float:
    """hidden: (N, H, W) bool -> the SimMIM paper's AvgDist: the mean Euclidean distance (in
    pixels) from a hidden pixel to the nearest visible one."""
    h, w = hidden.shape[1:]
    yx = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    yx = yx.reshape(-1, 2).float()
    total, count = 0.0, 0
    for m in hidden.reshape(len(hidden), -1):
        d = torch.cdist(yx[m], yx[~m])  # (hidden, visible)
        total += d.min(dim=1).values.sum().item()
        count += int(m.sum())
    return total / count


def laptop_views(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x: (N, 3, 32, 32) in [0, 1] -> one normalised view each, as the MIM laptop profile."""
    torch.manual_seed(seed)
    crop = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0)), v2.RandomHorizontalFlip()])
    views = torch.stack([crop(image) for image in x])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (views - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def diffusion_fill(x: torch.Tensor, hidden: torch.Tensor, iterations: int) -> torch.Tensor:
    """x: (N, 3, H, W), hidden: (N, 1, H, W) bool -> x with its hidden pixels replaced by the
    harmonic interpolation of the visible ones (Jacobi iterations of 4-neighbour averaging)."""
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
    kernel = kernel.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    visible = ~hidden
    out = torch.where(hidden, image_mean_fill(x, hidden), x)
    for _ in range(iterations):
        smoothed = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        out = torch.where(visible, x, smoothed)
    return out


def image_mean_fill(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    visible = (~hidden).to(x.dtype)
    mean = (x * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)
    return torch.where(hidden, mean.expand_as(x), x)


def norm_patches(patches: torch.Tensor) -> torch.Tensor:
    """(N, L, P) -> each patch minus its mean, over the root of its unbiased variance + 1e-6."""
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var + 1.0e-6) ** 0.5


def normalised_fit(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target: (N, L, P) patches, mask: (N, L) -> pred's patches normalised as
    ``mae_loss`` normalises targets, times the least-squares factor over the masked patches."""
    pred, target = norm_patches(pred), norm_patches(target)
    w = mask.unsqueeze(-1).to(pred.dtype)
    scale = (pred * target * w).sum() / (pred * pred * w).sum().clamp_min(1.0e-12)
    return pred * scale


def scores(x: torch.Tensor, unit: int, ratio: float, iterations: int, seed: int) -> tuple:
    """The masks' AvgDist and each inpainter's SimMIM L1 and MAE normalised-pixel MSE on
    ``x``'s masked patches."""
    n, patch = x.shape[0], 4
    grid = (x.shape[2] // patch, x.shape[3] // patch)
    mask = unit_masking(n, grid, unit, ratio, torch.Generator().manual_seed(seed))  # (N, L)
    pixels = mask.reshape(n, *grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    hidden = pixels.unsqueeze(1)
    fills = {
        "mean colour": torch.where(hidden, torch.zeros_like(x), x),
        "image mean": image_mean_fill(x, hidden),
        "diffusion": diffusion_fill(x, hidden, iterations),
    }
    target = patchify(x, patch)
    return avg_dist(pixels), {
        name: (
            simmim_loss(pred, x, pixels).item(),
            mae_loss(
                normalised_fit(patchify(pred, patch), target, mask), target, mask.to(x.dtype)
            ).item(),
        )
        for name, pred in fills.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", required=True, help="cifar10-jpeg.tar.gz")
    p.add_argument("--per-class", type=int, default=200, help="test images per class")
    p.add_argument("--iterations", type=int, default=300, help="diffusion fill iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--maskings",
        nargs="+",
        default=MASKINGS,
        help="UNIT:RATIO, the mask unit in 4-pixel patches (default: SimMIM's and MAE's profile)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)  # small convolutions: more threads only contend with other work
    images, _ = cifar_test_sample(args.cifar, args.per_class)
    x = laptop_views(images, args.seed)
    print(
        f"{len(x)} CIFAR-10 test images, one laptop view each\n\n"
        "| mask unit (pixels) | ratio | AvgDist (pixels) | inpainter | SimMIM L1 (normalised "
        "pixels) | MAE MSE (per-patch normalised, best scale) |\n|---|---|---|---|---|---|"
    )
    for masking in args.maskings:
        unit, ratio = masking.split(":")
        dist, losses = scores(x, int(unit), float(ratio), args.iterations, args.seed)
        for name, (l1, mse) in losses.items():
            print(f"| {4 * int(unit)} | {ratio} | {dist:.2f} | {name} | {l1:.3f} | {mse:.3f} |")


if __name__ == "__main__":
    main()
