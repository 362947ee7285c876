"""Decoding encoded image bytes into RGB PIL images, at reduced size when that loses nothing.

Every mode PIL opens becomes RGB: palette and alpha modes are composited onto white (dropping
alpha would turn transparent pixels black), 16-bit and 32-bit greyscale are scaled to 8 bits
rather than clipped, CMYK goes through PIL's conversion. EXIF orientation is applied, so a
photo's crop boxes refer to the image as it is displayed.
"""

import io
import math

import numpy as np
from PIL import Image, ImageOps

# EXIF orientations that swap width and height once applied
_TRANSPOSING = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


class BadImageError(ValueError):
    """The bytes of a record are not a decodable image."""


def open_image(data: bytes) -> Image.Image:
    """Open lazily (header only); raise BadImageError naming the problem.

    An image over ``Image.MAX_IMAGE_PIXELS`` is bad. PIL itself refuses only beyond twice that
    and merely warns in between, after which PNG and TIFF decode at full size whatever the
    draft: a 1.9× bomb would cost its full memory in every task that meets it.
    """
    if not data:
        raise BadImageError("empty record")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises several types for junk bytes, bombs included
        raise BadImageError(f"not an image ({type(e).__name__}: {e})") from e
    if img.width < 1 or img.height < 1:
        raise BadImageError(f"image has no pixels ({img.width}×{img.height})")
    limit = Image.MAX_IMAGE_PIXELS  # read at call time: None disables the check, as in PIL
    if limit and img.width * img.height > limit:
        raise BadImageError(
            f"{img.width}×{img.height} pixels is over PIL's limit of {limit} "
            "(Image.MAX_IMAGE_PIXELS; a decompression bomb, or an image too large to decode)"
        )
    return img


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding."""
    w, h = img.size
    return (h, w) if orientation(img) in _TRANSPOSING else (w, h)


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale -> "L", scaled rather than clipped."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        arr = arr.astype(np.uint32) >> 8
    elif img.mode == "I":  # PIL's 32-bit integer mode, usually 16-bit data in disguise
        arr = arr.astype(np.int64)
        arr = arr >> 8 if arr.max(initial=0) > 255 else arr
    else:  # "F": [0, 1] floats, or values already on the 8-bit scale
        arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (see the module docstring)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit(img).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        # composite onto white rather than letting convert() drop alpha onto black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _exif_transpose(img: Image.Image) -> Image.Image:
    if orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # as in orientation(): keep the pixels as stored
        return img


def decode_rgb(img: Image.Image, shrink: float = 1.0) -> Image.Image:
    """Decode to RGB with EXIF orientation applied.

    ``shrink`` >= 2 lets a JPEG decode at 1/2, 1/4 or 1/8 scale (PIL draft mode) as long as the
    result stays at least ``1/shrink`` of the full size: the caller guarantees no crop needs more.
    """
    try:
        if shrink >= 2 and img.format == "JPEG":
            w, h = img.size
            img.draft("RGB", (math.ceil(w / shrink), math.ceil(h / shrink)))
        img.load()  # truncated or corrupt data fails here, not later in a resize
        img = to_rgb(_exif_transpose(img))
        img.load()
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(f"cannot decode ({type(e).__name__}: {e})") from e
    if img.width < 1 or img.height < 1:
        raise BadImageError("image has no pixels")
    return img


def decode_bytes(data: bytes, shrink: float = 1.0) -> Image.Image:
    """:func:`open_image` then :func:`decode_rgb`."""
    return decode_rgb(open_image(data), shrink)


def check_image(data: bytes) -> tuple[int, int]:
    """Decode ``data`` cheaply enough to catch truncation and junk; return the displayed
    (width, height). JPEGs decode at 1/8 scale: still every entropy-coded byte is read."""
    img = open_image(data)
    size = oriented_size(img)
    decode_rgb(img, shrink=8.0)
    return size


def reencode(data: bytes, max_side: int, quality: int = 90) -> tuple[bytes, int, int]:
    """Shrink an image whose longer displayed side exceeds ``max_side`` and encode it as RGB
    JPEG at ``quality``; others come back unchanged. Returns (bytes, width, height)."""
    img = open_image(data)
    width, height = oriented_size(img)
    if max(width, height) <= max_side:
        decode_rgb(img, shrink=8.0)  # still reject undecodable records
        return data, width, height
    scale = max_side / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = decode_rgb(img, shrink=1 / scale)
    # reducing_gap: a box pre-shrink, then Lanczos; as good as plain Lanczos and much faster
    small = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), new_size[0], new_size[1]
