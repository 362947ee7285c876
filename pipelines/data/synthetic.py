"""The embedded dataset: ten classes of shapes and textures, generated once, cached as shards.

Classes differ by shape or texture only. Colour, position, scale, rotation, background gradient
and clutter are random for every image, so nearest neighbours on raw pixels do poorly and an
encoder has to learn augmentation-invariant features to separate them. Deterministic per seed.
"""

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.data.manifest import MANIFEST_NAME
from pipelines.data.shard.writer import Row, write_shards
from pipelines.tracking.console import progress_bar

CLASSES = [
    "disc",
    "ring",
    "triangle",
    "square",
    "frame",
    "cross",
    "star",
    "stripes",
    "checker",
    "dots",
]
SIZE = 32  # stored image side, like CIFAR
_CANVAS = 96  # drawn at 3× and downsampled, for anti-aliased edges
VERSION = 1  # bump when the generator changes, so caches regenerate
FILES_PER_SPLIT = 8


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _polygon(
    cx: float, cy: float, radius: float, n: int, angle: float
) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / n),
            cy + radius * math.sin(angle + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _rotated(points: list[tuple[float, float]], cx: float, cy: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _texture_mask(kind: str, r: float, cx: float, cy: float, angle: float, rng) -> Image.Image:
    """A square patch of stripes, checks or dots, rotated, as a mask."""
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    cells = int(rng.integers(3, 5))
    step = 2 * r / cells
    x0, y0 = cx - r, cy - r
    for i in range(cells):
        for j in range(cells):
            box = [
                (x0 + i * step, y0 + j * step),
                (x0 + (i + 1) * step, y0 + j * step),
                (x0 + (i + 1) * step, y0 + (j + 1) * step),
                (x0 + i * step, y0 + (j + 1) * step),
            ]
            if (kind == "stripes" and i % 2 == 0) or (kind == "checker" and (i + j) % 2 == 0):
                draw.polygon(_rotated(box, cx, cy, angle), fill=255)
            elif kind == "dots":
                px, py = _rotated([(x0 + (i + 0.5) * step, y0 + (j + 0.5) * step)], cx, cy, angle)[
                    0
                ]
                d = step * 0.3
                draw.ellipse([px - d, py - d, px + d, py + d], fill=255)
    return mask


def _shape_mask(kind: str, rng: np.random.Generator) -> Image.Image:
    r = rng.uniform(0.22, 0.4) * _CANVAS
    cx = rng.uniform(r * 0.8, _CANVAS - r * 0.8)
    cy = rng.uniform(r * 0.8, _CANVAS - r * 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    if kind in ("stripes", "checker", "dots"):
        return _texture_mask(kind, r * 0.9, cx, cy, angle, rng)
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    width = max(3, int(r * 0.3))
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=255)
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle), fill=255)
    elif kind == "frame":
        draw.line(_polygon(cx, cy, r, 4, angle) * 2, fill=255, width=width, joint="curve")
    elif kind == "cross":
        arm = [(-r, -r * 0.22), (r, -r * 0.22), (r, r * 0.22), (-r, r * 0.22)]
        for a in (angle, angle + math.pi / 2):
            draw.polygon(_rotated([(cx + x, cy + y) for x, y in arm], cx, cy, a), fill=255)
    elif kind == "star":
        outer = _polygon(cx, cy, r, 5, angle)
        inner = _polygon(cx, cy, r * 0.4, 5, angle + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=False) for p in pair], fill=255)
    else:
        raise ValueError(f"unknown class {kind!r}")
    return mask


def render(label: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``label``: gradient background, clutter, a randomly coloured shape."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, _CANVAS)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]  # (H, W)
    ramp = (ramp - ramp.min()) / max(1e-6, ramp.max() - ramp.min())
    bg = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]  # (H, W, 3)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # clutter: thin lines and small blobs
        color = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x0, y0, x1, y1 = rng.uniform(0, _CANVAS, 4)
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 4)))
        else:
            d = rng.uniform(2, 6)
            draw.ellipse([x0 - d, y0 - d, x0 + d, y0 + d], fill=color)
    bg_luma = _luma(bg.mean((0, 1)))
    for _ in range(20):  # a foreground colour that stands out from the background
        fg = rng.uniform(0, 255, 3)
        if abs(_luma(fg) - bg_luma) > 60:
            break
    fill = Image.new("RGB", img.size, tuple(int(v) for v in fg))
    img.paste(fill, (0, 0), _shape_mask(CLASSES[label], rng))
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def generate_rows(per_class: int, seed: int) -> Iterator[Row]:
    for index in range(per_class * len(CLASSES)):
        label = index % len(CLASSES)
        rng = np.random.default_rng([seed, index])
        buf = io.BytesIO()
        render(label, rng).save(buf, format="JPEG", quality=95)
        yield Row(f"{CLASSES[label]}/{index:06d}.jpg", buf.getvalue(), label, SIZE, SIZE)


def ensure_embedded(cache_dir: str, train_per_class: int, test_per_class: int) -> tuple[str, str]:
    """Generate the embedded train and test shard sets under ``cache_dir`` unless present."""
    root = Path(cache_dir).resolve() / f"embedded-v{VERSION}-{train_per_class}-{test_per_class}"
    paths = []
    for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        dest = root / split
        if not (dest / MANIFEST_NAME).exists():
            # several files, so Ray Data decodes them in parallel and streams from the start
            total = per_class * len(CLASSES)
            rows_per_file = -(-total // FILES_PER_SPLIT)
            bar = progress_bar(f"generating the embedded {split} split", total, "images")
            with bar:
                rows = (bar.update(1) or row for row in generate_rows(per_class, seed))
                write_shards(rows, str(dest), CLASSES, max_rows=rows_per_file)
        paths.append(str(dest))
    return paths[0], paths[1]
