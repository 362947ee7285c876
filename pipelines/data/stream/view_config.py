"""What the data stream cuts from each image: view groups, their crops and photometric settings,
and the pretext recipes' views. Plain frozen dataclasses: the decode tasks import this module and
nothing of the model code."""

from dataclasses import dataclass, field
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# view group and view count each pretext recipe writes
RECIPE_GROUPS: dict[str, tuple[str, int]] = {
    "rotation": ("global", 4),  # the 0°, 90°, 180°, 270° copies of one crop
    "relative_loc": ("patches", 2),  # the centre patch, then one of its 8 neighbours
    "jigsaw": ("tiles", 9),  # the 3×3 tiles in shuffled order
}


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour and blur augmentation of one view (SimCLR appendix A; BYOL table 6)."""

    jitter_p: float = 0.8  # probability of colour jitter
    brightness: float = 0.4  # jitter strengths, torchvision ColorJitter semantics
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5  # Gaussian blur probability
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma drawn uniformly in this range
    blur_kernel_fraction: float = 0.1  # kernel side as a fraction of the view size (odd, >= 3)
    solarize_p: float = 0.0  # BYOL's second view uses 0.2
    solarize_threshold: float = 0.5  # pixels above this (in [0, 1]) are inverted


@dataclass(frozen=True)
class ViewGroupConfig:
    """Views of one resolution that share their crop geometry."""

    count: int = 2  # views per image in this group
    size: int = 224  # output side in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    hflip_p: float = 0.5
    # cycled over the group's views: one entry applies to all, two make BYOL's asymmetric pair
    photometric: tuple[PhotometricConfig, ...] = (PhotometricConfig(),)


@dataclass(frozen=True)
class RelativeLocViewsConfig:
    """Patch pairs of relative location (Doersch et al. 2015, section 3); sizes in pixels at the
    patch resolution (the ``patches`` group's size; 96 in the paper)."""

    gap: int = 48  # space between neighbouring patches: no low-level edge continuation
    jitter: int = 7  # each patch moves by up to this much: no straight-line continuation
    drop_channels: bool = True  # keep one random colour channel per patch (chromatic aberration)
    drop_noise: float = 0.01  # std of the noise in the dropped channels, × the kept channel's std


@dataclass(frozen=True)
class JigsawViewsConfig:
    """3×3 jigsaw puzzles (Noroozi & Favaro 2016, section 3); tiles take the ``tiles`` group's
    size (64 in the paper)."""

    cell: int = 75  # side of each grid cell; the tile is cut at a random place inside it
    permutations: int = 1000  # size of the permutation set: the number of classes
    permutation_seed: int = 0  # the set is chosen deterministically from this seed
    # "average": the paper's Algorithm 1 (largest mean Hamming distance to the chosen set);
    # "maximin": the largest minimum distance first, then the paper's criterion (same mean)
    selection: Literal["average", "maximin"] = "average"
    channel_jitter: int = 2  # shift each colour channel by up to this much: chromatic aberration
    grayscale_p: float = 0.3  # whole images turned grey, so colour alone cannot place tiles


@dataclass(frozen=True)
class ViewsConfig:
    # how views are cut from an image: random crops per group, or a pretext task's views plus
    # its targets (pipelines/data/stream/pretext_views.py)
    recipe: Literal["crops", "rotation", "relative_loc", "jigsaw"] = "crops"
    groups: dict[str, ViewGroupConfig] = field(
        default_factory=lambda: {"global": ViewGroupConfig()}
    )
    relative_loc: RelativeLocViewsConfig = field(default_factory=RelativeLocViewsConfig)
    jigsaw: JigsawViewsConfig = field(default_factory=JigsawViewsConfig)
    # where colour and blur run: on the CPU side inside Ray Data, or batched on the train device
    augment_device: Literal["cpu", "train"] = "train"
    # where JPEGs are decoded, cropped and resized: in Ray Data's CPU tasks, or on the training
    # device from the encoded bytes and the crop geometry drawn on the CPU side (nvJPEG on GPU;
    # device_views.py); "train" needs the crops recipe and augment_device: train
    decode_device: Literal["cpu", "train"] = "cpu"
    draft_decode: bool = True  # let PIL decode JPEGs at reduced size when the crop shrinks anyway
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation on the training device
    std: tuple[float, float, float] = IMAGENET_STD
