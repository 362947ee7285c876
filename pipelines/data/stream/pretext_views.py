"""View recipes of the context-based pretext tasks, on the CPU side: uint8 views plus targets.

Each maker is a ``map_batches`` callable like ``views.ViewMaker``: shard rows in, one uint8 view
group ``(B, V, 3, S, S)`` (normalised and, with ``augment_device: train``, augmented by the
training step), an int64 target and ``label`` out. The group's ``size`` is the side of one view.

- ``rotation`` (RotNet, Gidaris et al. 2018): one random-resized crop per image, flipped at
  random, and its 4 rotations by k·90° counter-clockwise (view k) as group ``global``
  (B, 4, 3, S, S); ``rotation`` (B, 4) holds k = 0, 1, 2, 3. All 4 copies of an image go into
  the same batch, as the paper found best.
- ``relative_loc`` (Doersch et al. 2015): a square region is cut into a 3×3 grid of S-pixel
  patches separated by ``gap`` pixels, each moved by up to ``jitter`` pixels; group ``patches``
  (B, 2, 3, S, S) holds the centre patch and one of its 8 neighbours, ``position`` (B,) which
  neighbour (row-major, centre skipped: 0 top-left ... 7 bottom-right). Against shortcuts, as
  the paper: the gaps and the jitter (no continuing edges or lines), and colour dropping (each
  patch keeps one random colour channel, the other two become the normalisation mean plus
  Gaussian noise of 1/100 the kept channel's std: no chromatic aberration cue). Not done: the
  paper's alternative "projection" of colours and its random down-sampling of some patches.
- ``jigsaw`` (Noroozi & Favaro 2016): a square region is cut into 3×3 cells of ``cell`` pixels,
  an S-pixel tile is taken at a random place in each (so tile edges do not meet), the tiles are
  shuffled by permutation p of a fixed set; group ``tiles`` (B, 9, 3, S, S) holds tile
  ``perm[i]`` at slot i, ``permutation`` (B,) holds p. Against shortcuts, as the paper: the
  random place in each cell, 30% of images in grayscale, each colour channel shifted on its
  own by up to ``channel_jitter`` pixels; the method standardises every tile on its own.
"""

import logging

import numpy as np
import torch
from PIL import Image

from pipelines.data.decode import BadImageError, decode_rgb, open_image, oriented_size
from pipelines.data.stream.jigsaw_permutations import permutation_set
from pipelines.data.stream.view_config import RECIPE_GROUPS, ViewsConfig
from pipelines.data.stream.views import apply_photometric, random_resized_crop_box

log = logging.getLogger(__name__)

# (row, column) of the 8 neighbours of the centre cell, in the order of their class index
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


class PretextViewMaker:
    """Decoding, the bad-image policy and batching shared by the recipes below, which each
    turn one image into its views and target (``example``)."""

    recipe: str = ""
    target: str = ""  # the batch key of the target
    target_shape: tuple[int, ...] = ()  # of one image's target

    def __init__(self, views: ViewsConfig, bad_images: str = "skip", seed: int | None = None):
        if views.recipe != self.recipe:
            raise ValueError(
                f"{type(self).__name__} makes '{self.recipe}' views, not {views.recipe!r}"
            )
        self.group_name, self.count = RECIPE_GROUPS[self.recipe]
        if self.group_name not in views.groups:
            raise ValueError(
                f"the {self.recipe} recipe needs a view group '{self.group_name}' "
                f"(views.groups has {sorted(views.groups)})"
            )
        self.views = views
        self.group = views.groups[self.group_name]
        self.size = self.group.size
        self.bad_images = bad_images
        self.skipped: list[str] = []  # keys of the images skipped so far (policy "skip")
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))

    def region(self, data: bytes, side: int, ratio: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """A random-resized crop (the group's scale, aspect ``ratio``), flipped with the
        group's probability, as a (side, side, 3) uint8 array."""
        img = open_image(data)
        width, height = oriented_size(img)
        left, top, right, bottom = random_resized_crop_box(
            width, height, self.group.scale, ratio, self.rng
        )
        shrink = min(right - left, bottom - top) / side
        img = decode_rgb(img, shrink if self.views.draft_decode else 1.0)
        sx, sy = img.width / width, img.height / height
        box = (left * sx, top * sy, right * sx, bottom * sy)
        crop = img.resize((side, side), Image.Resampling.BILINEAR, box=box)
        if self.rng.random() < self.group.hflip_p:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(crop)

    def example(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """One image -> its views (V, 3, S, S) uint8 and its target."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        views, targets, labels = [], [], []
        for i, data in enumerate(batch["image"]):
            try:
                v, t = self.example(data)
            except BadImageError as e:
                key = batch["key"][i] if "key" in batch else f"row {i}"
                if self.bad_images == "strict":
                    raise BadImageError(f"bad image {key}: {e}") from e
                log.warning("skipping bad image %s: %s", key, e)
                self.skipped.append(str(key))
                continue
            views.append(v)
            targets.append(t)
            labels.append(int(batch["label"][i]) if "label" in batch else -1)
        s = self.size
        out = {
            self.group_name: np.stack(views)
            if views
            else np.zeros((0, self.count, 3, s, s), np.uint8),
            self.target: np.stack(targets).astype(np.int64)
            if targets
            else np.zeros((0, *self.target_shape), np.int64),
            "label": np.asarray(labels, dtype=np.int64),
        }
        if self.views.augment_device == "cpu" and views:
            out[self.group_name] = apply_photometric(
                out[self.group_name], self.group, self.torch_gen
            )
        return out


class RotationViews(PretextViewMaker):
    recipe, target, target_shape = "rotation", "rotation", (4,)

    def example(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        crop = self.region(data, self.size, self.group.ratio).transpose(2, 0, 1)  # (3, S, S)
        views = np.stack([np.rot90(crop, k, axes=(1, 2)) for k in range(4)])  # (4, 3, S, S)
        return np.ascontiguousarray(views), np.arange(4)


class RelativeLocViews(PretextViewMaker):
    recipe, target, target_shape = "relative_loc", "position", ()

    def example(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        cfg, p = self.views.relative_loc, self.size
        step = p + cfg.gap  # from one patch's corner to the next one's
        region = self.region(data, 3 * p + 2 * cfg.gap + 2 * cfg.jitter)  # (T, T, 3)
        position = int(self.rng.integers(len(NEIGHBOURS)))
        patches = []
        for row, col in ((1, 1), NEIGHBOURS[position]):
            dy, dx = self.rng.integers(-cfg.jitter, cfg.jitter + 1, size=2)
            top, left = cfg.jitter + row * step + dy, cfg.jitter + col * step + dx
            patch = region[top : top + p, left : left + p].transpose(2, 0, 1)  # (3, p, p)
            patches.append(self.drop_channels(patch) if cfg.drop_channels else patch)
        return np.stack(patches), np.asarray(position)

    def drop_channels(self, patch: np.ndarray) -> np.ndarray:
        """Keep one random channel; the others become the normalisation mean (zero once
        normalised) plus noise of ``drop_noise`` × the kept channel's std."""
        keep = int(self.rng.integers(3))
        sigma = self.views.relative_loc.drop_noise * float(patch[keep].std())
        out = np.empty_like(patch)
        for c in range(3):
            if c == keep:
                out[c] = patch[c]
            else:
                noise = self.rng.normal(255 * self.views.mean[c], sigma, patch.shape[1:])
                out[c] = np.clip(np.rint(noise), 0, 255)
        return out


class JigsawViews(PretextViewMaker):
    recipe, target, target_shape = "jigsaw", "permutation", ()

    def __init__(self, views: ViewsConfig, bad_images: str = "skip", seed: int | None = None):
        super().__init__(views, bad_images, seed)
        jig = views.jigsaw
        if jig.cell < self.size + 2 * jig.channel_jitter:
            raise ValueError(
                f"jigsaw: a cell of {jig.cell} pixels cannot hold a {self.size}-pixel tile with "
                f"a channel jitter of {jig.channel_jitter}"
            )
        self.permutations = permutation_set(jig.permutations, jig.permutation_seed, jig.selection)

    def example(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        jig, t = self.views.jigsaw, self.size
        region = self.region(data, 3 * jig.cell)  # (3·cell, 3·cell, 3)
        if self.rng.random() < jig.grayscale_p:
            gray = np.asarray(Image.fromarray(region).convert("L"))
            region = np.repeat(gray[:, :, None], 3, axis=2)
        j = jig.channel_jitter
        tiles = []
        for cell in range(9):  # row-major
            y0 = (cell // 3) * jig.cell + int(self.rng.integers(j, jig.cell - t - j + 1))
            x0 = (cell % 3) * jig.cell + int(self.rng.integers(j, jig.cell - t - j + 1))
            shifts = self.rng.integers(-j, j + 1, size=(3, 2))  # per channel (dy, dx)
            tiles.append(
                np.stack(
                    [
                        region[y0 + dy : y0 + dy + t, x0 + dx : x0 + dx + t, c]
                        for c, (dy, dx) in enumerate(shifts)
                    ]
                )
            )  # (3, t, t)
        index = int(self.rng.integers(len(self.permutations)))
        shuffled = np.stack([tiles[k] for k in self.permutations[index]])  # (9, 3, t, t)
        return shuffled, np.asarray(index)


PRETEXT_VIEW_MAKERS: dict[str, type[PretextViewMaker]] = {
    cls.recipe: cls for cls in (RotationViews, RelativeLocViews, JigsawViews)
}
