import math

import pytest
import torch

from ssl_models.backbones import build_backbone
from ssl_models.backbones.vit import SIZES, VisionTransformer, vit
from ssl_models.backbones.vit_layers import sincos_2d


def tiny(**kw) -> VisionTransformer:
    args = dict(image_size=16, patch_size=4, dim=16, depth=2, heads=2)
    return VisionTransformer(**{**args, **kw})


def test_named_sizes_are_the_vit_papers():
    # ViT/DeiT: tiny 192-d 3 heads, small 384-d 6 heads, base 768-d 12 heads; 12 blocks each
    assert SIZES == {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
    }


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small", "vit_base"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_size_maps_images_to_pooled_features(name, batch):
    torch.manual_seed(0)
    dim = SIZES[name][0]
    # depth 1 keeps the test fast; width and heads are the size's own
    model = build_backbone(name, image_size=32, patch_size=16, depth=1).eval()
    assert model.out_dim == dim and model.heads == SIZES[name][2]
    x = torch.randn(batch, 3, 32, 32)
    assert model(x).shape == (batch, dim)
    assert model.forward_tokens(x).shape == (batch, 1 + 4, dim)


def test_overrides_and_defaults():
    model = build_backbone("vit_tiny", image_size=32, patch_size=4, dim=96, heads=3, depth=2)
    assert (model.dim, len(model.blocks), model.num_patches) == (96, 2, 64)
    assert len(build_backbone("vit_tiny", image_size=16, patch_size=16).blocks) == 12


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooling_is_the_cls_token_or_the_patch_mean(pool):
    torch.manual_seed(0)
    model = tiny(pool=pool).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_tokens(x)
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1)
    torch.testing.assert_close(model(x), expected)


def test_cls_mean_pool_is_beits_probe_input_side_by_side():
    # run_linear_eval.py: torch.cat((cls_rep, mean_rep), dim=-1)
    torch.manual_seed(0)
    model = tiny(pool="cls_mean").eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_tokens(x)
    assert model.out_dim == 2 * model.dim == 32
    torch.testing.assert_close(model(x), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1))


def test_sincos_table_known_values():
    table = sincos_2d(8, 2, 3)  # dim 8: two frequencies per axis, omega = [1, 1/100]
    assert table.shape == (1 + 6, 8)
    assert torch.equal(table[0], torch.zeros(8))  # the CLS position
    # patch (row 1, column 2) is row-major index 5 -> table row 6; x part first, then y
    x, y = 2.0, 1.0
    expected = [math.sin(x), math.sin(x / 100), math.cos(x), math.cos(x / 100)]
    expected += [math.sin(y), math.sin(y / 100), math.cos(y), math.cos(y / 100)]
    torch.testing.assert_close(table[6], torch.tensor(expected))


def test_position_embedding_for_other_grids():
    model = tiny()
    assert torch.equal(model.position_embedding(4, 4), model.pos_embed)
    torch.testing.assert_close(model.position_embedding(2, 3)[0], sincos_2d(16, 2, 3))
    learned = tiny(pos_embed="learned")
    assert learned.position_embedding(6, 6).shape == (1, 37, 16)
    assert learned(torch.randn(1, 3, 24, 24)).shape == (1, 16)


def test_dropping_tokens_encodes_exactly_the_kept_patches():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    keep = torch.tensor([[5, 0, 9], [15, 3, 4]])
    # without blocks, each token is norm(patch + pos): dropping must select exactly those
    bare = tiny(depth=0).eval()
    full = bare.forward_tokens(x)
    kept = bare.forward_tokens(x, keep=keep)
    assert kept.shape == (2, 1 + 3, 16)
    torch.testing.assert_close(kept[:, 1:], full[:, 1:][torch.arange(2)[:, None], keep])
    torch.testing.assert_close(kept[:, 0], full[:, 0])
    # with blocks, dropped patches have no influence at all
    model = tiny().eval()
    y = x.clone()
    y[:, :, 4:8, 4:8] += 5  # patch 5 = (row 1, column 1) ... is kept in sample 0 only
    y[:, :, 12:16, 8:12] += 5  # patch 14, dropped in both samples
    a, b = model.forward_tokens(x, keep=keep), model.forward_tokens(y, keep=keep)
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], b[0])


def test_mask_token_replaces_exactly_the_masked_positions():
    torch.manual_seed(0)
    model = tiny(depth=0).eval()
    model.enable_mask_token()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 7]] = True
    mask[1, 15] = True
    plain = model.forward_tokens(x)[:, 1:]
    masked = model.forward_tokens(x, mask=mask)[:, 1:]
    expected = model.norm(model.mask_token[0] + model.pos_embed[0, 1:])  # (16, dim)
    torch.testing.assert_close(masked[mask], expected.expand(2, -1, -1)[mask])
    torch.testing.assert_close(masked[~mask], plain[~mask])
    # with blocks, the pixels under the mask cannot matter
    deep = tiny().eval()
    deep.enable_mask_token()
    y = x.clone()
    y[0, :, 0:4, 4:8] = 100.0  # patch 1 of sample 0, masked
    torch.testing.assert_close(deep.forward_tokens(x, mask=mask), deep.forward_tokens(y, mask=mask))


def test_mask_token_only_when_enabled():
    model = tiny()
    assert model.mask_token is None and "mask_token" not in dict(model.named_parameters())
    with pytest.raises(ValueError, match="enable_mask_token"):
        model.forward_tokens(torch.randn(1, 3, 16, 16), mask=torch.zeros(1, 16, dtype=torch.bool))
    model.enable_mask_token()
    assert "mask_token" in dict(model.named_parameters())


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected)


def test_errors_name_the_problem():
    model = tiny()
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="not both"):
        model.forward_tokens(
            torch.randn(1, 3, 16, 16), mask=torch.zeros(1, 16), keep=torch.zeros(1, 2)
        )
    with pytest.raises(ValueError, match="unknown ViT size"):
        vit("vit_huge")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit_huge")
    with pytest.raises(ValueError, match="divisible by 3 heads"):
        build_backbone("vit_tiny", image_size=16, patch_size=4, dim=64, depth=1)
    with pytest.raises(ValueError, match="not a multiple"):
        build_backbone("vit_tiny", image_size=30, patch_size=4)


@pytest.mark.parametrize("scheme, cut", [("beit", 0.02), ("simmim", 2.0)])
def test_beit_and_simmim_init_is_a_small_normal_with_deeper_outputs_shrunk(scheme, cut):
    # BEiT's and SimMIM's references: weights ~ N(0, 0.02²) (BEiT's cut at ±0.02), zero biases,
    # then each block's attn.proj and mlp.fc2 divided by sqrt(2 · block number)
    torch.manual_seed(0)
    model = tiny(dim=64, depth=3, heads=2, init=scheme)
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02 if scheme == "simmim" else 0.0108, rel=0.1)
    assert qkv.abs().max().item() <= min(cut, 0.2)
    assert model.patch_embed.weight.std().item() < 0.025  # xavier's would be about 0.18
    assert float(model.blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0
    first = model.blocks[0].mlp[2].weight.std().item()
    third = model.blocks[2].mlp[2].weight.std().item()
    assert third / first == pytest.approx(1 / math.sqrt(3), rel=0.1)
    third_proj = model.blocks[2].attn.proj.weight.std().item()
    assert third_proj / qkv.std().item() == pytest.approx(1 / math.sqrt(6), rel=0.15)
    model.enable_mask_token()
    assert model.mask_token.abs().max().item() <= 0.02


def test_dino_init_is_a_trunc_normal_on_linear_layers_and_a_zero_mask_token():
    # DINO's and iBOT's vision_transformer.py _init_weights, DINOv2's init_weights_vit_timm:
    # nn.Linear weights ~ N(0, 0.02²) (trunc_normal_ cut at ±2: uncut in effect), zero biases,
    # no residual rescaling; the patch projection (a Conv2d) keeps PyTorch's default; the mask
    # token (iBOT's masked_embed, DINOv2's mask_token) starts at zeros
    torch.manual_seed(0)
    model = tiny(dim=64, depth=3, heads=2, init="dino", pos_embed="learned")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 12
    for m in linears:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert float(m.bias.detach().abs().max()) == 0.0
    # nn.Conv2d's default: U(±1/sqrt(fan_in)), std 1/sqrt(3 · 3 · 4 · 4)
    assert model.patch_embed.weight.std().item() == pytest.approx((3 * 48) ** -0.5, rel=0.1)
    assert model.cls_token.std().item() == pytest.approx(0.02, rel=0.3)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    model.enable_mask_token()
    assert torch.equal(model.mask_token, torch.zeros(1, 1, 64))


def test_default_init_is_maes_xavier():
    torch.manual_seed(0)
    model = tiny(dim=64, depth=2, heads=2)
    qkv = model.blocks[0].attn.qkv.weight  # xavier-uniform: std sqrt(2 / (64 + 192))
    assert qkv.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    with pytest.raises(ValueError, match="init must be"):
        tiny(init="kaiming")
