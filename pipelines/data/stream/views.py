"""View recipes on the CPU side: decode, random-resized crops, flips -> uint8 views.

A ``ViewMaker`` is the function Ray Data's ``map_batches`` applies to shard rows. It emits, per
resolution group, a uint8 array ``(B, V, 3, S, S)``, plus ``label``. With ``augment_device: cpu``
it also applies the photometric augmentation here; otherwise the training step does, on its device.
"""

import logging
import math

import numpy as np
import torch
from PIL import Image

from pipelines.data.decode import BadImageError, decode_rgb, open_image, oriented_size
from pipelines.data.stream.photometric import photometric
from pipelines.data.stream.view_config import ViewGroupConfig, ViewsConfig

log = logging.getLogger(__name__)


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[float, float, float, float]:
    """A crop box (left, top, right, bottom) as torchvision's RandomResizedCrop.get_params:
    area fraction uniform in ``scale``, log-uniform aspect ratio, 10 tries, then a centre crop
    clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    w, h = max(1, w), max(1, h)
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


class ViewMaker:
    """Callable for ``map_batches``: shard rows -> views per group (see module docstring)."""

    def __init__(self, views: ViewsConfig, bad_images: str = "skip", seed: int | None = None):
        self.views = views
        self.groups = {k: g for k, g in views.groups.items() if g.count > 0}
        self.bad_images = bad_images
        self.skipped: list[str] = []  # keys of the images skipped so far (policy "skip")
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))

    def _crops(self, data: bytes) -> dict[str, np.ndarray]:
        img = open_image(data)
        width, height = oriented_size(img)
        boxes = {
            name: [
                random_resized_crop_box(width, height, g.scale, g.ratio, self.rng)
                for _ in range(g.count)
            ]
            for name, g in self.groups.items()
        }
        # the most the image can shrink before the most demanding crop would need upsampling
        shrink = min(
            min(b[2] - b[0], b[3] - b[1]) / self.groups[name].size
            for name, bs in boxes.items()
            for b in bs
        )
        img = decode_rgb(img, shrink if self.views.draft_decode else 1.0)
        sx, sy = img.width / width, img.height / height
        out = {}
        for name, g in self.groups.items():
            crops = []
            for left, top, right, bottom in boxes[name]:
                box = (left * sx, top * sy, right * sx, bottom * sy)
                crop = img.resize((g.size, g.size), Image.Resampling.BILINEAR, box=box)
                if self.rng.random() < g.hflip_p:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                crops.append(np.asarray(crop).transpose(2, 0, 1))  # (3, S, S)
            out[name] = np.stack(crops)  # (V, 3, S, S)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        per_group: dict[str, list[np.ndarray]] = {name: [] for name in self.groups}
        labels = []
        for i, data in enumerate(batch["image"]):
            try:
                crops = self._crops(data)
            except BadImageError as e:
                key = batch["key"][i] if "key" in batch else f"row {i}"
                if self.bad_images == "strict":
                    raise BadImageError(f"bad image {key}: {e}") from e
                log.warning("skipping bad image %s: %s", key, e)
                self.skipped.append(str(key))
                continue
            for name in self.groups:
                per_group[name].append(crops[name])
            labels.append(int(batch["label"][i]) if "label" in batch else -1)
        out: dict[str, np.ndarray] = {}
        for name, g in self.groups.items():
            views = (
                np.stack(per_group[name])
                if labels
                else np.zeros((0, g.count, 3, g.size, g.size), np.uint8)
            )
            if self.views.augment_device == "cpu" and labels:
                views = apply_photometric(views, g, self.torch_gen)
            out[name] = views
        out["label"] = np.asarray(labels, dtype=np.int64)
        return out


def view_maker(views: ViewsConfig, bad_images: str = "skip", seed: int | None = None):
    """The ``map_batches`` callable of ``views.recipe``: random crops (:class:`ViewMaker`) or a
    pretext task's views and targets (``pretext_views.py``)."""
    if views.recipe == "crops":
        return ViewMaker(views, bad_images, seed)
    from pipelines.data.stream.pretext_views import PRETEXT_VIEW_MAKERS  # it imports this module

    return PRETEXT_VIEW_MAKERS[views.recipe](views, bad_images, seed)


def augment_views(
    x: torch.Tensor, group: ViewGroupConfig, g: torch.Generator | None = None
) -> torch.Tensor:
    """Photometric augmentation of a group's views ``(B, V, 3, S, S)``, float in [0, 1],
    cycling the group's per-view settings (BYOL's asymmetric pair, DINO's global crops)."""
    out = torch.empty_like(x)
    for v in range(x.shape[1]):
        cfg = group.photometric[v % len(group.photometric)]
        out[:, v] = photometric(x[:, v], cfg, g)
    return out


def prepare_views(
    batch: dict[str, torch.Tensor],
    views: ViewsConfig,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """uint8 views -> normalised float views on ``device``, augmented here when
    ``views.augment_device`` is ``train``. Other keys pass through, moved to ``device``."""
    mean = torch.tensor(views.mean, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(views.std, device=device).view(1, 1, 3, 1, 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        group = views.groups.get(key)
        if group is not None:
            if value.dtype != torch.uint8 or value.ndim != 5:
                raise ValueError(
                    f"views '{key}' must be uint8 (B, V, 3, H, W), got {value.dtype} "
                    f"{tuple(value.shape)}"
                )
            x = value.float().div_(255)
            if views.augment_device == "train":
                x = augment_views(x, group, generator)
            value = (x - mean) / std
        out[key] = value
    return out


def apply_photometric(
    views: np.ndarray, group: ViewGroupConfig, g: torch.Generator | None = None
) -> np.ndarray:
    """CPU-side :func:`augment_views` on uint8 arrays, rounding back to uint8."""
    x = torch.from_numpy(views).float().div_(255)
    return augment_views(x, group, g).mul_(255).round_().to(torch.uint8).numpy()


class EvalViewMaker:
    """Callable for ``map_batches``: the evaluation view of each image, as uint8 ``image``
    ``(B, 3, S, S)``: shorter side resized to ``size / crop_fraction``, then a centre crop."""

    def __init__(self, size: int, crop_fraction: float = 0.875, bad_images: str = "skip"):
        self.size = size
        self.crop_fraction = crop_fraction
        self.bad_images = bad_images

    def _view(self, data: bytes) -> np.ndarray:
        img = open_image(data)
        width, height = oriented_size(img)
        crop_side = min(width, height) * self.crop_fraction
        img = decode_rgb(img, crop_side / self.size)
        sx, sy = img.width / width, img.height / height
        left, top = (width - crop_side) / 2, (height - crop_side) / 2
        box = (left * sx, top * sy, (left + crop_side) * sx, (top + crop_side) * sy)
        crop = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(crop).transpose(2, 0, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, labels = [], []
        for i, data in enumerate(batch["image"]):
            try:
                images.append(self._view(data))
            except BadImageError as e:
                key = batch["key"][i] if "key" in batch else f"row {i}"
                if self.bad_images == "strict":
                    raise BadImageError(f"bad image {key}: {e}") from e
                log.warning("skipping bad image %s: %s", key, e)
                continue
            labels.append(int(batch["label"][i]))
        shape = (0, 3, self.size, self.size)
        return {
            "image": np.stack(images) if images else np.zeros(shape, np.uint8),
            "label": np.asarray(labels, dtype=np.int64),
        }
