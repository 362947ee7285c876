"""What the quality benchmarks (``method_quality.py``, ``peer_parity.py``) share: their datasets
besides the embedded one, a CIFAR-10 subset from the shared tarball and the embedded set in
grayscale, each sharded once into a cache; and the lock a run holds on a shared machine."""

import contextlib
import fcntl
import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

_TARBALL = Path("shared") / "data" / "cifar10-jpeg.tar.gz"
CIFAR_CANDIDATES = [Path(__file__).resolve().parents[1].parent / _TARBALL, Path("/work") / _TARBALL]


@contextlib.contextmanager
def locked(path: str | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (none when ``path`` is empty)."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_cifar(
    tarball: Path,
    cache: Path,
    train_per_class: int,
    test_per_class: int,
    keep_folders: bool = False,
) -> tuple:
    """Shards of the first ``*_per_class`` images (sorted names) of every class, train and test.
    With ``keep_folders`` the JPEG files stay beside them in ImageFolder layout
    (``folder-train/<class>/…``), for a reader that is not sslpipe's.

    The tarball is gzip-compressed: members are read in stream order (two passes: the names,
    then the chosen files), since reading them in another order re-decompresses from the start."""
    from pipelines.data.shard.job import shard
    from pipelines.data.shard.writer import ShardOptions

    root = cache / f"cifar10-{train_per_class}-{test_per_class}"
    splits = {"train": train_per_class, "test": test_per_class}
    dests = {split: root / f"shards-{split}" for split in splits}
    folders = {split: root / f"folder-{split}" for split in splits}
    todo = [
        s
        for s in splits
        if not (dests[s] / "_manifest.json").exists()
        or (keep_folders and not (folders[s] / ".complete").exists())
    ]
    if todo:
        with tarfile.open(tarball) as tar:
            names = sorted(m.name for m in tar if m.isfile())
        chosen: dict[str, Path] = {}
        for split in todo:
            taken: dict[str, int] = {}
            for name in names:
                parts = name.split("/")
                if len(parts) != 3 or parts[0] != split or taken.get(parts[1], 0) >= splits[split]:
                    continue
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                chosen[name] = root / f"folder-{split}" / parts[1] / parts[2]
        for split in todo:
            shutil.rmtree(folders[split], ignore_errors=True)
            shutil.rmtree(dests[split], ignore_errors=True)
        with tarfile.open(tarball) as tar:
            for m in tar:
                if m.name in chosen:
                    chosen[m.name].parent.mkdir(parents=True, exist_ok=True)
                    chosen[m.name].write_bytes(tar.extractfile(m).read())
        for split in todo:
            shard(str(folders[split]), str(dests[split]), ShardOptions(), workers=0, progress=False)
            if keep_folders:
                (folders[split] / ".complete").touch()
            else:
                shutil.rmtree(folders[split])
    return tuple(str(dests[s]) for s in splits)


def prepare_embedded_gray(cache: Path, train_per_class: int, test_per_class: int) -> tuple:
    """Shards of the embedded set (same seeds and sizes as ``ensure_embedded``) with every
    image converted to grayscale and stored as 3-channel RGB."""
    from PIL import Image

    from pipelines.data.manifest import MANIFEST_NAME
    from pipelines.data.shard.writer import Row, write_shards
    from pipelines.data.synthetic import CLASSES, FILES_PER_SPLIT, VERSION, generate_rows

    def gray(rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            img = Image.open(io.BytesIO(row.image)).convert("L").convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            yield Row(row.key, buf.getvalue(), row.label, row.width, row.height)

    root = cache / f"embedded-gray-v{VERSION}-{train_per_class}-{test_per_class}"
    paths = []
    for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        dest = root / split
        if not (dest / MANIFEST_NAME).exists():
            rows_per_file = -(-per_class * len(CLASSES) // FILES_PER_SPLIT)
            write_shards(
                gray(generate_rows(per_class, seed)), str(dest), CLASSES, max_rows=rows_per_file
            )
        paths.append(str(dest))
    return tuple(paths)


def cifar_test_sample(tarball: Path | str, per_class: int) -> tuple:
    """The first ``per_class`` test images of every class in the tarball's stream order, for
    the probes that need labelled pixels in memory: images (N, 3, 32, 32) in [0, 1] and labels
    (N,), classes numbered in sorted name order."""
    import numpy as np
    import torch
    from PIL import Image

    images, names = [], []
    taken: dict[str, int] = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] != "test":
                continue
            if taken.get(parts[1], 0) >= per_class:
                continue
            taken[parts[1]] = taken.get(parts[1], 0) + 1
            data = tar.extractfile(m).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            names.append(parts[1])
    classes = sorted(set(names))
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([classes.index(n) for n in names])
