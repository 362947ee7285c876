"""Views decoded on the training device (``views.decode_device: train``), the DALI-style path.

Two halves around Ray Data's stream:

- CPU side, :class:`CropPlanner` (the ``map_batches`` callable): reads only each JPEG's header
  and draws the geometry exactly as :class:`~pipelines.data.stream.views.ViewMaker` does (random
  resized crop boxes in the displayed image's coordinates, horizontal flips), then ships the
  encoded bytes with it. Rows the device decoder should not get (not a JPEG, CMYK/YCCK, no
  end-of-image marker: truncated) are decoded here as today and ship their finished uint8
  views instead; their keys are the *fallbacks*, counted like bad images (``bad_images.py``).
- Device side, :func:`decode_views`: decodes the batch's JPEGs at once with
  ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA), applies the EXIF orientation, crops and
  resizes with PIL's antialiased bilinear filter (see :func:`crop_views`) and flips, and returns
  the uint8 views ``(B, V, 3, S, S)`` per group that the CPU path would have sent: the
  photometric step and normalisation then run in ``TrainStep`` as for every batch.

A row travels as ``key``, ``label``, ``jpeg`` (bytes; empty for a fallback), ``orientation``
(EXIF 1-8) and per group ``<group>.box`` float32 ``(V, 4)`` (left, top, right, bottom),
``<group>.flip`` bool ``(V,)`` and ``<group>.pixels`` (a fallback's views as raw bytes, else
empty). Only torch, torchvision, numpy and PIL are imported: the GPU check runs it without Ray.
"""

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.data.decode import (
    BadImageError,
    decode_bytes,
    open_image,
    orientation,
    oriented_size,
)
from pipelines.data.stream.view_config import ViewsConfig
from pipelines.data.stream.views import ViewMaker, random_resized_crop_box

log = logging.getLogger(__name__)

_DEVICE_MODES = ("RGB", "L")  # JPEG colour modes decode_jpeg turns into RGB as PIL does
_EOI = b"\xff\xd9"  # JPEG end-of-image marker: absent from a truncated file


def _device_decodable(img, data: bytes) -> bool:
    return img.format == "JPEG" and img.mode in _DEVICE_MODES and data.rstrip(b"\0")[-2:] == _EOI


class CropPlanner(ViewMaker):
    """Callable for ``map_batches``: shard rows -> encoded JPEGs plus crop geometry (see the
    module docstring). ``skipped``: keys of bad images; ``fallbacks``: keys decoded here."""

    def __init__(self, views: ViewsConfig, bad_images: str = "skip", seed: int | None = None):
        super().__init__(views, bad_images, seed)
        self.fallbacks: list[str] = []

    def _plan(self, data: bytes) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
        img = open_image(data)  # header only
        width, height = oriented_size(img)
        boxes, flips = {}, {}
        for name, g in self.groups.items():
            boxes[name] = np.array(
                [random_resized_crop_box(width, height, g.scale, g.ratio, self.rng)
                 for _ in range(g.count)],
                dtype=np.float32,
            )  # fmt: skip
            flips[name] = self.rng.random(g.count) < g.hflip_p
        return orientation(img), boxes, flips

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict] = []
        for i, data in enumerate(batch["image"]):
            key = str(batch["key"][i]) if "key" in batch else f"row {i}"
            row: dict = {"key": key, "label": int(batch["label"][i]) if "label" in batch else -1}
            try:
                img = open_image(data)
                if _device_decodable(img, data):
                    row["orientation"], row["box"], row["flip"] = self._plan(data)
                    row["jpeg"] = bytes(data)
                else:
                    row["pixels"] = self._crops(data)  # decoded here, as on the CPU path
                    self.fallbacks.append(key)
            except BadImageError as e:
                if self.bad_images == "strict":
                    raise BadImageError(f"bad image {key}: {e}") from e
                log.warning("skipping bad image %s: %s", key, e)
                self.skipped.append(key)
                continue
            rows.append(row)
        out: dict[str, np.ndarray] = {
            "key": np.array([r["key"] for r in rows], dtype=object),
            "label": np.array([r["label"] for r in rows], dtype=np.int64),
            "jpeg": np.array([r.get("jpeg", b"") for r in rows], dtype=object),
            "orientation": np.array([r.get("orientation", 1) for r in rows], dtype=np.int64),
        }
        for name, g in self.groups.items():
            no_box = np.zeros((g.count, 4), np.float32)  # a fallback's: its views are made
            no_flip = np.zeros(g.count, bool)
            boxes = [r.get("box", {}).get(name, no_box) for r in rows]
            flips = [r.get("flip", {}).get(name, no_flip) for r in rows]
            pixels = [r["pixels"][name].tobytes() if "pixels" in r else b"" for r in rows]
            out[f"{name}.box"] = np.stack(boxes) if rows else no_box[None][:0]  # (B, V, 4)
            out[f"{name}.flip"] = np.stack(flips) if rows else no_flip[None][:0]  # (B, V)
            out[f"{name}.pixels"] = np.array(pixels, dtype=object)
        return out


def orient(img: torch.Tensor, exif: int) -> torch.Tensor:
    """Apply EXIF orientation ``exif`` (1-8) to img: (C, H, W), as PIL's ``exif_transpose``."""
    if exif == 2:
        return img.flip(-1)
    if exif == 3:
        return img.flip(-1, -2)
    if exif == 4:
        return img.flip(-2)
    if exif == 5:
        return img.transpose(-1, -2)
    if exif == 6:
        return img.rot90(-1, (-2, -1))  # 90° clockwise
    if exif == 7:
        return img.transpose(-1, -2).flip(-1, -2)
    if exif == 8:
        return img.rot90(1, (-2, -1))  # 90° counter-clockwise
    return img


def crop_views(
    img: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int
) -> torch.Tensor:
    """Cut and resize views from one image. img: (3, H, W) uint8 in the displayed orientation;
    boxes: (V, 4) integer (left, top, right, bottom); flips: (V,) bool -> (V, 3, size, size)
    uint8. Bilinear, antialiased when shrinking: PIL's filter and pixel centres, except that
    the filter reads only the box, where PIL's ``resize(box=...)`` reaches up to half a
    shrink factor past it; the two differ in the outermost pixels only (by a few levels).
    Reading past the box as PIL does (gathered taps) cost 7× more on CPU."""
    views = []
    for (left, top, right, bottom), flip in zip(boxes.tolist(), flips.tolist(), strict=True):
        crop = img[:, int(top) : int(bottom), int(left) : int(right)].unsqueeze(0).float()
        view = F.interpolate(crop, (size, size), mode="bilinear", antialias=True)[0]
        views.append(view.flip(-1) if flip else view)
    return torch.stack(views).round_().clamp_(0, 255).to(torch.uint8)  # (V, 3, S, S)


def _decode_all(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """All JPEGs in one call (nvJPEG's batched decode on CUDA); one by one when the batch fails,
    None for each the device decoder cannot read."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


@dataclass
class DecodeReport:
    fallbacks: list[str] = field(default_factory=list)  # decoded by PIL on this host instead
    skipped: list[str] = field(default_factory=list)  # undecodable: replaced, see decode_views


def decode_views(
    batch: dict[str, np.ndarray],
    views: ViewsConfig,
    device: torch.device,
    bad_images: str = "skip",
) -> tuple[dict[str, torch.Tensor], DecodeReport]:
    """A :class:`CropPlanner` batch -> ``{group: uint8 (B, V, 3, S, S), "label": (B,)}`` on
    ``device``, plus the keys that needed a fallback. A JPEG the device decoder refuses is
    decoded by PIL here; one PIL refuses too is a bad image: ``strict`` raises, ``skip``
    counts it and repeats another row's views in its place, since every worker must keep the
    same batch size for the collectives (shards are checked when written: this is rare)."""
    groups = {k: g for k, g in views.groups.items() if g.count > 0}
    keys = [str(k) for k in batch["key"]]
    n, report = len(keys), DecodeReport()
    encoded = [i for i in range(n) if len(batch["jpeg"][i])]
    tensors = [torch.frombuffer(bytearray(batch["jpeg"][i]), dtype=torch.uint8) for i in encoded]
    decoded = dict(zip(encoded, _decode_all(tensors, device) if tensors else [], strict=True))
    out: dict[str, list[torch.Tensor | None]] = {name: [None] * n for name in groups}
    bad: set[int] = set()
    for i in range(n):
        img = decoded.get(i)
        if i in decoded and img is None:
            try:  # the device decoder refused it: PIL on this host, already oriented
                rgb = np.asarray(decode_bytes(bytes(batch["jpeg"][i])))
                img = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).to(device)
                report.fallbacks.append(keys[i])
            except BadImageError as e:
                if bad_images == "strict":
                    raise BadImageError(f"bad image {keys[i]}: {e}") from e
                log.warning("skipping bad image %s: %s", keys[i], e)
                report.skipped.append(keys[i])
                bad.add(i)
                continue
        elif img is not None:
            img = orient(img, int(batch["orientation"][i]))
        for name, g in groups.items():
            if img is None:  # decoded on the CPU side
                raw = np.frombuffer(batch[f"{name}.pixels"][i], dtype=np.uint8)
                view = torch.from_numpy(raw.reshape(g.count, 3, g.size, g.size).copy())
                out[name][i] = view.to(device)
            else:
                boxes = torch.from_numpy(np.asarray(batch[f"{name}.box"][i]))
                flips = torch.from_numpy(np.asarray(batch[f"{name}.flip"][i]))
                out[name][i] = crop_views(img, boxes, flips, g.size)
    good = [i for i in range(n) if i not in bad]
    if n and not good:
        raise BadImageError(f"no decodable image in a batch of {n} (e.g. {keys[0]})")
    result: dict[str, torch.Tensor] = {}
    for name, g in groups.items():
        filled = [v if v is not None else out[name][good[0]] for v in out[name]]
        empty = torch.zeros((0, g.count, 3, g.size, g.size), dtype=torch.uint8, device=device)
        result[name] = torch.stack(filled) if filled else empty
    result["label"] = torch.as_tensor(np.asarray(batch["label"], dtype=np.int64))
    return result, report
