import pytest
import torch

from ssl_models.tokenizer import (
    KMeansTokenizer,
    TokenizerConfig,
    load_tokenizer,
    save_tokenizer,
    tokenizer_for,
)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def fitted(seed: int = 0, k: int = 16) -> KMeansTokenizer:
    tok = KMeansTokenizer(k, 4)
    tok.fit(tok.features(images()).flatten(0, 1), iters=5, seed=seed)
    return tok


def test_fitting_is_deterministic_from_the_seed():
    a, b, c = fitted(0), fitted(0), fitted(1)
    assert torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.codebook, c.codebook)


def test_codes_are_in_range_one_per_patch():
    tok = fitted()
    codes = tok.encode(images(3, seed=5))
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 16


def test_kmeans_finds_separated_clusters():
    # two tight blobs of 48-d points: the codebook must land on their means
    g = torch.Generator().manual_seed(0)
    centres = torch.stack([torch.full((48,), -3.0), torch.full((48,), 3.0)])
    points = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(100, 48, generator=g)
    tok = KMeansTokenizer(2, 4, normalize=False)
    stats = tok.fit(points, iters=10, seed=0)
    found = tok.codebook[tok.codebook[:, 0].argsort()]
    torch.testing.assert_close(found, centres, atol=0.01, rtol=0)
    assert stats["codewords_used"] == 2 and stats["mean_sq_distance"] < 0.01


def test_normalised_tokens_ignore_per_patch_brightness_and_contrast():
    tok = fitted()
    x = images(2, seed=7)
    # the same affine change inside every 4x4 patch: scale 3, offset 1 (positive scale)
    assert torch.equal(tok.encode(3 * x + 1), tok.encode(x))


def test_saved_tokenizer_reloads_to_identical_codes(tmp_path):
    tok = fitted()
    path = str(tmp_path / "tok.pt")
    save_tokenizer(tok, path)
    again = load_tokenizer(path)
    x = images(4, seed=9)
    assert torch.equal(again.encode(x), tok.encode(x))
    assert (again.codebook_size, again.patch_size, again.normalize) == (16, 4, True)
    # a plain torch file, loadable without unpickling code
    assert torch.load(path, weights_only=True)["kind"] == "kmeans"


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot fit a codebook of 16"):
        KMeansTokenizer(16, 4).fit(torch.randn(10, 48))
    with pytest.raises(ValueError, match=r"features \(N, 48\)"):
        KMeansTokenizer(16, 4).fit(torch.randn(100, 12))
    with pytest.raises(ValueError, match=r"tokenizer\.path is empty"):
        tokenizer_for(TokenizerConfig(), 4, "beit")
    path = str(tmp_path / "tok.pt")
    save_tokenizer(fitted(), path)
    with pytest.raises(ValueError, match="4-px patches, the ViT uses 16-px"):
        tokenizer_for(TokenizerConfig(codebook_size=16, path=path), 16, "beit")
    with pytest.raises(ValueError, match="codebook_size=16"):
        tokenizer_for(TokenizerConfig(codebook_size=8192, path=path), 4, "cae")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.pt"))
    torch.save({"kind": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an sslpipe tokenizer"):
        load_tokenizer(str(tmp_path / "bad.pt"))
