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


# Class indices run from 0 to this. The manifest lists class names densely up to the largest
# label, so a label beyond a million classes (a typo, an id, a hash) is a bad record, not a class.
MAX_LABEL = 2**20 - 1


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def printable(name: str) -> str:
    """``name`` as it can be shown and stored: bytes that are not UTF-8 (which Python keeps as
    surrogate escapes) become ``\\xe9`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_problem(name: str) -> str:
    """Why a path inside an archive or folder cannot be a record's key; "" when it can. An
    absolute or ``..`` name would otherwise become a class of its own (``""``, ``..``)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if name.startswith("/"):
        return "absolute member name"
    if ".." in name.split("/"):
        return "'..' in the member name"
    return ""


def size_problem(size: int, max_bytes: int) -> str:
    """Why a record of ``size`` bytes is not read; "" when it is (``max_bytes`` 0: no cap)."""
    if 0 < max_bytes < size:
        return (
            f"{size} bytes is over the cap of {max_bytes} bytes "
            f"(--max-record-mb {max_bytes / 2**20:g})"
        )
    return ""


def label_problem(label: int) -> str:
    """Why a label given by the source is not a class index; "" when it is."""
    if label < 0:
        return f"label {label} is negative (leave it empty for an unlabelled image)"
    if label > MAX_LABEL:
        return f"label {label} is over {MAX_LABEL}: a class index, not an id?"
    return ""


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
