"""MAE, SimMIM, BEiT and CAE on a 2-block ViT over 16-pixel images (16 patches of 4 px)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ssl_models.backbones import build_backbone
from ssl_models.backbones.masking import (
    block_masking,
    gather_tokens,
    random_masking,
    step_generator,
    unit_masking,
    visible_and_masked,
)
from ssl_models.methods.base import Progress
from ssl_models.registry import METHODS
from ssl_models.tokenizer import KMeansTokenizer

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


def build(key: str, seed: int = 0, pos_embed: str = "sincos", drop_path: float = 0.0, **overrides):
    torch.manual_seed(seed)
    entry = METHODS[key]
    backbone = build_backbone(
        "vit_tiny",
        image_size=16,
        patch_size=4,
        dim=16,
        depth=2,
        heads=2,
        pos_embed=pos_embed,
        drop_path=drop_path,
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


def test_cae_regressor_ends_in_a_layer_norm_that_feeds_alignment_and_decoder():
    # lxtGH/CAE modeling_cae_helper.py VisionTransformerNeck.forward: x_masked = self.norm(...)
    # after the regressor blocks; latent_pred (aligned with the encoder's normalised tokens) and
    # the decoder's input (+ positions) are that normalised output
    method = build("cae", regressor_depth=2)
    raw, decoder_in = [], []
    method.regressor[-1].register_forward_hook(lambda m, i, o: raw.append(o))
    method.decoder[0].register_forward_pre_hook(lambda m, i: decoder_in.append(i[0]))
    images = batch(2)["global"]
    method.on_step_start(Progress(3, 10, 10))
    out = method({"global": images})
    mask = block_masking(
        2,
        (4, 4),
        8,
        min_block=2,
        min_aspect=0.3,
        exact=True,
        generator=step_generator(method.seed, 3),
    )
    _, ids_masked = visible_and_masked(mask)
    pos_masked = gather_tokens(method.decoder_pos[:, 1:].expand(2, -1, -1), ids_masked)
    latent = F.layer_norm(raw[0], (16,), eps=1e-6)  # the norm starts at unit scale, zero shift
    torch.testing.assert_close(decoder_in[0] - pos_masked, latent)
    with torch.no_grad():
        target = method.backbone.forward_tokens(images[:, 0], keep=ids_masked)[:, 1:]
    torch.testing.assert_close(out["align_loss"], F.mse_loss(latent, target))


def test_cae_regressor_and_decoder_take_the_encoders_drop_path():
    # VisionTransformerNeck: linspace(0, drop_path_rate, depth) for the regressor blocks and
    # again for the decoder blocks, drop_path_rate being the encoder's
    method = build("cae", drop_path=0.3, regressor_depth=4, decoder_depth=2)
    rates = [0.0, 0.1, 0.2, 0.3]
    assert [b.drop_path for b in method.regressor] == pytest.approx(rates)
    assert [b.drop_path for b in method.decoder] == pytest.approx([0.0, 0.3])
    block = method.regressor[-1]
    q, kv, pos_q, pos_kv = torch.randn(8, 3, 16), torch.randn(8, 5, 16), *torch.randn(2, 8, 1, 16)
    block.train()  # each residual branch dropped per sample
    assert not torch.equal(block(q, kv, pos_q, pos_kv), block(q, kv, pos_q, pos_kv))
    block.eval()
    torch.testing.assert_close(block(q, kv, pos_q, pos_kv), block(q, kv, pos_q, pos_kv))
    assert all(b.drop_path == 0.0 for b in build("cae").regressor)


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


def test_simmim_l1_known_answer_with_a_zero_head():
    """With the head's output fixed at 0 the loss is the mean |pixel| over the masked pixels
    and the channels: the masked 8-pixel units drawn from the step's generator."""
    method = build("simmim")
    torch.nn.init.zeros_(method.head.weight)
    torch.nn.init.zeros_(method.head.bias)
    x = batch()["global"][:, 0]  # (4, 3, 16, 16)
    method.on_step_start(Progress(3, 10, 10))
    loss = method({"global": x[:, None]})["loss"]
    mask = unit_masking(4, (4, 4), 2, method.cfg.mask_ratio, step_generator(method.seed, 3))
    pixels = mask.reshape(4, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (4, 16, 16)
    expected = x.abs().permute(0, 2, 3, 1)[pixels].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
