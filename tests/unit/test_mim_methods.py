"""MAE, SimMIM, BEiT and CAE on a 2-block ViT over 16-pixel images (16 patches of 4 px)."""

import dataclasses

import pytest
import torch

from ssl_models.backbones import build_backbone
from ssl_models.backbones.masking import block_masking, random_masking, step_generator
from ssl_models.methods.base import Progress
from ssl_models.registry import METHODS
from ssl_models.tokenizer import KMeansTokenizer
from tests.unit.one_thread import one_thread  # noqa: F401

KEYS = ["mae", "simmim", "beit", "cae"]
SMALL = {
    "mae": dict(decoder_dim=16, decoder_depth=1, decoder_heads=2),
    "simmim": dict(mask_unit=8),
    "beit": dict(min_block_patches=2),
    "cae": dict(min_block_patches=2, regressor_depth=1, decoder_depth=1),
}


def batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"global": torch.randn(n, 1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))}


def tokenizer() -> KMeansTokenizer:
    tok = KMeansTokenizer(16, 4)
    tok.fit(tok.features(batch(8, seed=1)["global"][:, 0]).flatten(0, 1), iters=3)
    return tok


def build(key: str, seed: int = 0, pos_embed: str = "sincos", **overrides):
    torch.manual_seed(seed)
    entry = METHODS[key]
    backbone = build_backbone(
        "vit_tiny", image_size=16, patch_size=4, dim=16, depth=2, heads=2, pos_embed=pos_embed
    )
    cfg = dataclasses.replace(entry.config(), **{**SMALL[key], **overrides})
    extra = {"tokenizer": tokenizer()} if key in ("beit", "cae") else {}
    return entry.cls(backbone, cfg, **extra)


@pytest.mark.parametrize("pos_embed", ["sincos", "relative"])
@pytest.mark.parametrize("key", KEYS)
def test_forward_backward_reaches_every_trainable_parameter(key, pos_embed):
    method = build(key, pos_embed=pos_embed)
    out = method(batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    # DDP (find_unused_parameters=False) fails on a parameter without gradient
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert method.encoder is method.backbone


@pytest.mark.parametrize("pos_embed", ["sincos", "relative"])
@pytest.mark.parametrize("key", KEYS)
def test_loss_falls_on_a_fixed_batch(key, pos_embed):
    method = build(key, pos_embed=pos_embed)
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    x = batch()
    losses = []
    for _ in range(20):
        method.on_step_start(Progress(0, 20, 20))  # the same masks every step
        loss = method(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("key", KEYS)
def test_state_dict_round_trip(key):
    a, b = build(key, seed=0), build(key, seed=1)
    b.load_state_dict(a.state_dict())
    b.seed = a.seed  # the mask seed comes from torch's seed at construction, as in training
    x = batch(2)
    a.eval(), b.eval()
    for m in (a, b):
        m.on_step_start(Progress(5, 10, 10))
    torch.testing.assert_close(a(x)["loss"], b(x)["loss"])
    if key in ("beit", "cae"):
        assert "tokenizer.codebook" in a.state_dict()  # checkpoints carry the tokenizer


@pytest.mark.parametrize("key", KEYS)
def test_batch_of_one_and_wrong_views(key):
    method = build(key)
    assert torch.isfinite(method(batch(1))["loss"])
    with pytest.raises(ValueError, match=r"one global view \(B, 1, 3, H, W\)"):
        method({"global": torch.randn(2, 2, 3, 16, 16)})


@pytest.mark.parametrize("key", KEYS)
def test_methods_need_a_vit(key):
    entry = METHODS[key]
    resnet = build_backbone("resnet18", width=0.125)
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        entry.cls(
            resnet, entry.config(), **({"tokenizer": tokenizer()} if key in ("beit", "cae") else {})
        )


@pytest.mark.parametrize("key", ["beit", "cae"])
def test_no_gradient_reaches_masked_pixels(key):
    # masked patches reach BEiT only as tokenizer targets and CAE only through the stop-gradient
    # alignment target and the tokenizer: the encoder never sees them with gradient
    method = build(key)
    method.on_step_start(Progress(3, 10, 10))
    x = batch(2)["global"].requires_grad_(True)
    method({"global": x})["loss"].backward()
    ratio = method.cfg.mask_ratio
    mask = block_masking(
        2,
        (4, 4),
        round(ratio * 16),
        min_block=2,
        min_aspect=0.3,
        exact=key == "cae",
        generator=step_generator(method.seed, 3),
    )
    grad = x.grad[:, 0].abs().sum(1)  # (2, 16, 16) per pixel
    per_patch = grad.reshape(2, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 16, 16).sum(-1)
    assert (per_patch[mask] == 0).all() and (per_patch[~mask] > 0).all()


def test_mae_exports_the_encoder_without_the_decoder():
    method = build("mae")
    names = dict(method.encoder.named_parameters())
    assert not any("decoder" in n for n in names) and method.encoder.mask_token is None
    assert method.encoder(batch(2)["global"][:, 0]).shape == (2, 16)


def test_cae_masks_the_same_number_in_every_image():
    method = build("cae")
    out = method(batch(3))
    assert {"token_loss", "align_loss", "token_accuracy"} <= set(out)
    expected = out["token_loss"] + method.cfg.align_weight * out["align_loss"]
    torch.testing.assert_close(out["loss"].detach(), expected)


@pytest.mark.parametrize("encoder_mask_tokens", [False, True])
def test_mae_mask_token_ablation_hides_the_masked_pixels(encoder_mask_tokens):
    # table 1c of the MAE paper: the encoder sees all 16 patches (masked ones as the mask token)
    # instead of the 4 visible ones; either way no masked pixel reaches the prediction
    method = build("mae", encoder_mask_tokens=encoder_mask_tokens)
    seen, preds = [], []
    method.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    method.decoder_pred.register_forward_hook(lambda m, i, o: preds.append(o))
    x = batch(2)["global"]
    method.on_step_start(Progress(3, 10, 10))
    out = method({"global": x})
    mask = random_masking(2, 16, method.cfg.mask_ratio, step_generator(method.seed, 3)).mask
    pixels = mask.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    changed = torch.where(pixels[:, None, None], torch.randn_like(x), x)
    method.on_step_start(Progress(3, 10, 10))
    method({"global": changed})
    torch.testing.assert_close(preds[0], preds[1])
    assert seen == [1 + (16 if encoder_mask_tokens else 4)] * 2  # CLS + the encoded patches
    out["loss"].backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None]
    assert not missing
    assert (method.mask_token is None) == encoder_mask_tokens
    assert (method.encoder.mask_token is not None) == encoder_mask_tokens


@pytest.mark.parametrize("target", ["l1", "norm_pix_mse"])
def test_simmim_target_known_answer_with_a_zero_head(target):
    """With the head's output fixed at 0 the L1 target scores the mean |pixel| over masked
    pixels, and MAE's per-patch normalised target scores (P - 1) / P for every image: each
    masked patch's normalised values have mean 0 and unbiased variance 1 over its P values."""
    method = build("simmim", target=target)
    torch.nn.init.zeros_(method.head.weight)
    torch.nn.init.zeros_(method.head.bias)
    x = batch()
    method.on_step_start(Progress(3, 10, 10))
    loss = method(x)["loss"].item()
    if target == "norm_pix_mse":
        p = 4 * 4 * 3
        assert loss == pytest.approx((p - 1) / p, rel=1e-4)
        method.on_step_start(Progress(3, 10, 10))
        scaled = method({"global": 5 * x["global"] + 2})["loss"].item()  # per-patch affine
        assert scaled == pytest.approx(loss, rel=1e-4)
    else:
        method.on_step_start(Progress(3, 10, 10))
        scaled = method({"global": 2 * x["global"]})["loss"].item()
        assert scaled == pytest.approx(2 * loss, rel=1e-5)


def test_simmim_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="simmim: target must be"):
        build("simmim", target="l2")


def test_simmim_mae_head_is_maes_decoder_without_blocks():
    """head="mae" computes what MAE's decoder with no blocks computes on the same tokens: with
    MAE's weights copied in, the predictions agree for every patch, and MAE's [CLS] row (which
    SimMIM's head never sees) does not change them."""
    simmim = build("simmim", head="mae", head_dim=16)
    mae = build("mae", seed=1, decoder_dim=16, decoder_depth=0, encoder_mask_tokens=True)
    simmim.head.embed.load_state_dict(mae.decoder_embed.state_dict())
    simmim.head.norm.load_state_dict(mae.decoder_norm.state_dict())
    simmim.head.pred.load_state_dict(mae.decoder_pred.state_dict())
    latent = torch.randn(3, 1 + 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = mae.forward_decoder(latent, None, (4, 4))
        got = simmim.head(latent[:, 1:], (4, 4))
    assert got.shape == (3, 16, 4 * 4 * 3)
    torch.testing.assert_close(got, expected)
    # the position table is what tells equal tokens apart
    same = simmim.head(latent[:, 1:2].expand(3, 16, 16), (4, 4))
    assert not torch.allclose(same[:, 0], same[:, 1])


@pytest.mark.parametrize("pos_embed", ["sincos", "relative"])
def test_simmim_mae_head_trains(pos_embed):
    method = build("simmim", pos_embed=pos_embed, head="mae", head_dim=16)
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    x = batch()
    losses = []
    for _ in range(20):
        method.on_step_start(Progress(0, 20, 20))
        loss = method(x)["loss"]
        opt.zero_grad()
        loss.backward()
        missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    restored = build("simmim", seed=3, pos_embed=pos_embed, head="mae", head_dim=16)
    restored.load_state_dict(method.state_dict())
    restored.seed = method.seed  # the mask seed is torch's seed at construction, as in training
    method.on_step_start(Progress(5, 20, 20))
    restored.on_step_start(Progress(5, 20, 20))
    assert restored(x)["loss"].item() == pytest.approx(method(x)["loss"].item(), rel=1e-6)


def test_simmim_unknown_head_is_an_error():
    with pytest.raises(ValueError, match="simmim: head must be 'linear' or 'mae', got 'conv'"):
        build("simmim", head="conv")
