"""What a random ViT's features are made of, per weight init and position embedding.

The random-init kNN baselines of the masked-image-modeling ViTs differ on CIFAR-10 (BEiT and SimMIM
below MAE and CAE, the same blocks). This probe builds each method's random ViT (the laptop
profile's size, without layer scale) and measures, on real CIFAR-10 test images (50 per class):

- the image's share of the variance of the tokens entering the first block (the rest is the
  position embedding): variance over images at a fixed position / variance over everything;
- how far the blocks move the tokens: ||tokens out of the last block - tokens in|| / ||tokens in||,
  near 0 when the random encoder is nearly the identity on its patch embedding;
- the mean pairwise cosine of the pooled features (1: every image the same feature).

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.vit_init_probe \
        --cifar ../shared/data/cifar10-jpeg.tar.gz
"""

import argparse

import torch

from benchmarks.quality_data import cifar_test_sample
from pipelines.config import IMAGENET_MEAN, IMAGENET_STD
from ssl_models.backbones import build_backbone

VARIANTS = {  # label -> ViT options (init, position embedding), as each recipe sets them
    "xavier, sincos (MAE, CAE)": dict(init="xavier", pos_embed="sincos"),
    "simmim init, sincos": dict(init="simmim", pos_embed="sincos"),
    "simmim init, relative (SimMIM)": dict(init="simmim", pos_embed="relative"),
    "xavier, learned": dict(init="xavier", pos_embed="learned"),
    "beit init, learned": dict(init="beit", pos_embed="learned"),
    "beit init, relative (BEiT)": dict(init="beit", pos_embed="relative"),
    "xavier, relative": dict(init="xavier", pos_embed="relative"),
}


@torch.no_grad()
def probe(vit: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0])),
        vit.blocks[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("out", o)),
    ]
    features = vit(x)
    for h in hooks:
        h.remove()
    first, last = seen["in"], seen["out"]
    patches = first[:, -vit.num_patches :]  # (N, L, D), any [CLS] left out
    image_var = patches.var(0).mean()  # over images, at a fixed position
    total_var = patches.reshape(-1, patches.shape[-1]).var(0).mean()
    f = torch.nn.functional.normalize(features, dim=1)
    off_diagonal = ~torch.eye(len(f), dtype=torch.bool)
    return {
        "image_share": (image_var / total_var).item(),
        "blocks_move": ((last - first).norm() / first.norm()).item(),
        "pooled_cosine": (f @ f.T)[off_diagonal].mean().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", required=True, help="cifar10-jpeg.tar.gz")
    p.add_argument("--per-class", type=int, default=50, help="test images per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x, _ = cifar_test_sample(args.cifar, args.per_class)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    x = (x - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    print(
        "| init, position embedding | image share of token variance | blocks move tokens by "
        "| pooled cosine |\n|---|---|---|---|"
    )
    for label, options in VARIANTS.items():
        torch.manual_seed(args.seed)
        vit = build_backbone(
            "vit_tiny",
            image_size=32,
            patch_size=4,
            dim=80,
            depth=4,
            heads=4,
            pool="mean",
            **options,
        ).eval()
        r = probe(vit, x)
        print(
            f"| {label} | {r['image_share']:.3f} | {r['blocks_move']:.3f} "
            f"| {r['pooled_cosine']:.3f} |"
        )


if __name__ == "__main__":
    main()
