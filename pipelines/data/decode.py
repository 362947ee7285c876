"""Decoding encoded image bytes into RGB PIL images, at reduced size when that loses nothing."""

import io
import math

from PIL import Image, ImageOps

# EXIF orientations that swap width and height once applied
_TRANSPOSING = {5, 6, 7, 8}


class BadImageError(ValueError):
    """The bytes of a record are not a decodable image."""


def open_image(data: bytes) -> Image.Image:
    """Open lazily (header only); raise BadImageError naming the problem."""
    if not data:
        raise BadImageError("empty record")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises several types for junk bytes
        raise BadImageError(f"not an image ({type(e).__name__}: {e})") from e
    return img


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (h, w) if orientation in _TRANSPOSING else (w, h)


def decode_rgb(img: Image.Image, shrink: float = 1.0) -> Image.Image:
    """Decode to RGB with EXIF orientation applied.

    ``shrink`` >= 2 lets a JPEG decode at 1/2, 1/4 or 1/8 scale (PIL draft mode) as long as the
    result stays at least ``1/shrink`` of the full size: the caller guarantees no crop needs more.
    """
    try:
        if shrink >= 2 and img.format == "JPEG":
            w, h = img.size
            img.draft("RGB", (math.ceil(w / shrink), math.ceil(h / shrink)))
        img = ImageOps.exif_transpose(img)
        if img.mode == "I;16" or img.mode.startswith("I;16"):
            img = img.point(lambda v: v / 256).convert("L")  # 16-bit to 8-bit, not clipped
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # composite onto white rather than letting convert() drop alpha onto black
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        img = img.convert("RGB")
        img.load()
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(f"cannot decode ({type(e).__name__}: {e})") from e
    if img.width < 1 or img.height < 1:
        raise BadImageError("image has no pixels")
    return img
