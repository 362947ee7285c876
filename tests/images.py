"""Images the tests generate: every mode, every EXIF orientation, every kind of bad record."""

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses and resamples like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    channels = [
        127 + 100 * np.sin(x / max(1, width) * 6 + phase[c]) * np.cos(y / max(1, height) * 4)
        for c in range(3)
    ]
    arr = np.stack(channels, -1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=quality)


def bad_records() -> dict[str, bytes]:
    """Undecodable records, each a different failure."""
    good = jpeg(64, 48)
    return {
        "empty": b"",
        "not-an-image": b"this is plain text, not a picture\n" * 4,
        "truncated-jpeg": good[: len(good) // 2],
        "truncated-png": encode(photo(32, 32), "PNG")[:200],
        "header-only": good[:20],
    }


def write_imagefolder(root: Path, per_class: int = 3, classes=("cat", "dog"), size=(20, 16)):
    """root/<class>/<i>.jpg with distinct content; returns {key: bytes}."""
    written = {}
    for c_index, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = jpeg(size[0] + i, size[1], seed=100 * c_index + i)
            (root / c / f"{i}.jpg").write_bytes(data)
            written[f"{c}/{i}.jpg"] = data
    return written


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            add_to_tar(tar, name, data)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` and holds no pixel data: a decompression bomb
    to PIL when large, a truncated file otherwise."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def all_bad_records() -> dict[str, bytes]:
    return {**bad_records(), "bomb": png_header_only(60_000, 60_000)}
