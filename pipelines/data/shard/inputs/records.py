"""What every input format yields: raw records, and the units of work a shard task reads."""

from dataclasses import dataclass
from typing import NamedTuple

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
}


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


class Record(NamedTuple):
    """One source image: its stable key, its encoded bytes (b"" when unreadable, with
    ``error`` saying why), and its class index (-1 when unknown)."""

    key: str
    data: bytes
    label: int
    error: str = ""


@dataclass(frozen=True)
class SourcePlan:
    """A source cut into independent units of work, in a fixed order: re-planning the same
    source with the same options gives the same units, which is what makes resuming safe."""

    format: str  # imagefolder | tar | imagenet-tar | webdataset | list
    class_names: list[str]
    units: list  # FileListUnit | TarUnit, each picklable and JSON-describable
