"""Visual tokenizer for BEiT and CAE: a k-means codebook over image patches, fitted here.

BEiT and CAE predict the discrete tokens of the DALL-E dVAE, whose weights cannot be downloaded
here. This tokenizer is the classic substitute (a k-means / VQ codebook, as in Coates & Ng's patch
dictionaries and BEiT's own k-means ablations): each patch of the input, optionally normalised to
zero mean and unit variance like MAE's target, is assigned to its nearest codeword. Fitting is
pure torch (k-means++ seeding, Lloyd iterations) and deterministic from a seed. The tokenizer has
no parameters, only a ``codebook`` buffer, so it rides along in a method's state dict.
"""

import io
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ssl_models.backbones.masking import patchify

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["kmeans"] = "kmeans"  # a k-means codebook over patches (no DALL-E weights here)
    codebook_size: int = 8192  # visual vocabulary; 8192 as BEiT's and CAE's DALL-E tokenizer
    path: str = ""  # a fitted tokenizer (local or s3://) to reuse; empty: pretrain fits one
    normalize: bool = True  # cluster patches normalised per patch (structure, not colour)
    fit_images: int = 20000  # training images sampled (one view each) to fit the codebook
    fit_patches: int = 500_000  # at most this many of their patches enter k-means
    fit_iters: int = 20  # Lloyd iterations after k-means++ seeding
    seed: int = 0  # fitting is deterministic from this seed


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """patches: (..., P) -> zero mean and unit (unbiased) variance per patch, eps 1e-6 (MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1.0e-6) ** 0.5


def _sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """x: (N, P), centres: (K, P) -> squared Euclidean distances (N, K)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)
    return d.clamp_min_(0)


def _sq_distances_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise squared distances of two (N, P) tensors -> (N,)."""
    return ((a - b) ** 2).sum(1)


def nearest(x: torch.Tensor, centres: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest centre for each row of x: (N, P) -> (N,) long, in chunks.
    ``|x|²`` is the same for every centre, so ``|c|² - 2 x·c`` decides."""
    c_sq = (centres * centres).sum(1)
    return torch.cat(
        [
            torch.addmm(c_sq, x[i : i + chunk], centres.T, alpha=-2).argmin(1)
            for i in range(0, x.shape[0], chunk)
        ]
    )


class KMeansTokenizer(nn.Module):
    """images (B, 3, H, W), normalised as the method sees them -> tokens (B, L) in [0, K)."""

    def __init__(self, codebook_size: int, patch_size: int, normalize: bool = True) -> None:
        super().__init__()
        if codebook_size < 2 or patch_size < 1:
            raise ValueError(
                f"codebook_size >= 2 and patch_size >= 1, got {codebook_size}, {patch_size}"
            )
        self.codebook_size = codebook_size
        self.patch_size = patch_size
        self.normalize = normalize
        self.register_buffer("codebook", torch.zeros(codebook_size, 3 * patch_size**2))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> the vectors the codebook clusters, (B, L, 3·p·p), float32."""
        patches = patchify(images.float(), self.patch_size)
        return normalize_patches(patches) if self.normalize else patches

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> token ids (B, L), long."""
        with torch.autocast(images.device.type, enabled=False):  # argmin in full precision
            feats = self.features(images)
            b, length, dim = feats.shape
            return nearest(feats.reshape(b * length, dim), self.codebook.float()).reshape(b, length)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, iters: int = 20, seed: int = 0) -> dict[str, float]:
        """Fit the codebook to ``features`` (N, 3·p·p), rows of :meth:`features`: k-means++
        seeding (Arthur & Vassilvitskii 2007) on at most 32 candidates per codeword, then Lloyd
        iterations on all rows; an emptied cluster moves to the worst-fitted rows. Deterministic
        from ``seed``. Returns statistics: rows, mean squared distance, codewords in use."""
        k = self.codebook_size
        if features.ndim != 2 or features.shape[1] != self.codebook.shape[1]:
            raise ValueError(
                f"fit expects features (N, {self.codebook.shape[1]}), got {tuple(features.shape)}"
            )
        if features.shape[0] < k:
            raise ValueError(
                f"{features.shape[0]} patches cannot fit a codebook of {k}; sample more"
            )
        g = torch.Generator().manual_seed(seed)
        feats = features.float().to(self.codebook.device)

        # k-means++ on at most 32 candidates per codeword: seeding is sequential in k
        seeding = feats[torch.randperm(feats.shape[0], generator=g)[: 32 * k].to(feats.device)]
        centres = torch.empty(k, feats.shape[1], device=feats.device)
        centres[0] = seeding[int(torch.randint(seeding.shape[0], (1,), generator=g))]
        closest = _sq_distances(seeding, centres[:1]).squeeze(1)
        for i in range(1, k):
            weights = closest.cpu().double()
            if weights.sum() <= 0:  # fewer distinct patches than codewords
                weights = torch.ones_like(weights)
            pick = int(torch.multinomial(weights, 1, generator=g))
            centres[i] = seeding[pick]
            closest = torch.minimum(closest, _sq_distances(seeding, centres[i : i + 1]).squeeze(1))

        for _ in range(iters):
            assign = nearest(feats, centres)
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, assign, feats)
            used = counts > 0
            centres[used] = sums[used] / counts[used].unsqueeze(1)
            if not used.all():
                # refill empty clusters with the patches farthest from their codeword
                err = _sq_distances_rows(feats, centres[assign])
                worst = torch.argsort(err, descending=True)[: int((~used).sum())]
                centres[~used] = feats[worst]
        self.codebook.copy_(centres)
        assign = nearest(feats, centres)
        err = _sq_distances_rows(feats, centres[assign])
        return {
            "patches": float(feats.shape[0]),
            "mean_sq_distance": float(err.mean()),
            "codewords_used": float(torch.bincount(assign, minlength=k).gt(0).sum()),
        }


def build_tokenizer(cfg: TokenizerConfig, patch_size: int) -> KMeansTokenizer:
    """An unfitted tokenizer of the configured kind."""
    if cfg.kind != "kmeans":
        raise ValueError(f"unknown tokenizer kind {cfg.kind!r}; choose kmeans")
    return KMeansTokenizer(cfg.codebook_size, patch_size, cfg.normalize)


def tokenizer_bytes(tok: KMeansTokenizer) -> bytes:
    """The tokenizer as a torch file readable with ``weights_only=True``."""
    buf = io.BytesIO()
    state = {
        "format_version": FORMAT_VERSION,
        "kind": "kmeans",
        "codebook_size": tok.codebook_size,
        "patch_size": tok.patch_size,
        "normalize": tok.normalize,
        "codebook": tok.codebook.detach().cpu(),
    }
    torch.save(state, buf)
    return buf.getvalue()


def _open(path: str, mode: str):
    if "://" in path:
        import fsspec  # remote storage (s3://) through the same library Ray and s3fs use

        return fsspec.open(path, mode).open()
    return open(path, mode)


def save_tokenizer(tok: KMeansTokenizer, path: str) -> None:
    with _open(path, "wb") as f:
        f.write(tokenizer_bytes(tok))


def load_tokenizer(path: str) -> KMeansTokenizer:
    """Read a tokenizer written by :func:`save_tokenizer` (local path or s3://)."""
    try:
        with _open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer {path!r} does not exist") from None
    if not isinstance(state, dict) or state.get("kind") != "kmeans":
        raise ValueError(f"{path}: not an sslpipe tokenizer file")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: tokenizer format {state['format_version']} is newer than this code"
        )
    tok = KMeansTokenizer(state["codebook_size"], state["patch_size"], state["normalize"])
    tok.codebook.copy_(state["codebook"])
    return tok


def tokenizer_for(cfg: TokenizerConfig, patch_size: int, method: str) -> KMeansTokenizer:
    """The fitted tokenizer ``cfg.path`` names, checked against the backbone and the config."""
    if not cfg.path:
        raise ValueError(
            f"{method}: method_args.tokenizer.path is empty. `sslpipe pretrain` fits a tokenizer "
            f"on the training data before training; elsewhere fit one with "
            f"ssl_models.tokenizer.KMeansTokenizer.fit and save_tokenizer"
        )
    tok = load_tokenizer(cfg.path)
    if tok.patch_size != patch_size:
        raise ValueError(
            f"{method}: tokenizer {cfg.path} tokenizes {tok.patch_size}-px patches, the ViT uses "
            f"{patch_size}-px patches"
        )
    if tok.codebook_size != cfg.codebook_size or tok.normalize != cfg.normalize:
        raise ValueError(
            f"{method}: tokenizer {cfg.path} has codebook_size={tok.codebook_size}, "
            f"normalize={tok.normalize}; the config asks for {cfg.codebook_size}, {cfg.normalize}"
        )
    return tok
