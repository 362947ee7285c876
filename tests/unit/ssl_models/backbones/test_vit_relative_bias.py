"""The shared relative position bias (BEiT, SimMIM): table layout, offsets, the kept-token and
other-grid paths, and what it does to the encoder."""

import pytest
import torch
import torch.nn.functional as F

from pipelines.config.layers import build_config
from pipelines.config.typed import ConfigError
from ssl_models.backbones.vit import VisionTransformer
from ssl_models.backbones.vit_layers import Attention, RelativePositionBias


def tiny(**kw) -> VisionTransformer:
    args = dict(image_size=16, patch_size=4, dim=16, depth=2, heads=2, pos_embed="relative")
    return VisionTransformer(**{**args, **kw})


def offset_row(dy: int, dx: int, grid: int) -> int:
    """The table row of query-minus-key offset (dy, dx) in a table built for ``grid``."""
    return (dy + grid - 1) * (2 * grid - 1) + dx + grid - 1


def test_index_of_a_two_by_two_grid_by_hand():
    # tokens [CLS, (0,0), (0,1), (1,0), (1,1)]; 3x3 offsets, then CLS->patch, patch->CLS, CLS->CLS
    index = RelativePositionBias(2, heads=1).index
    assert index.tolist() == [
        [11, 9, 9, 9, 9],
        [10, 4, 3, 1, 0],
        [10, 5, 4, 2, 1],
        [10, 7, 6, 4, 3],
        [10, 8, 7, 5, 4],
    ]


def test_bias_depends_only_on_the_offset_between_patches():
    torch.manual_seed(0)
    rpb = RelativePositionBias(4, heads=3)
    with torch.no_grad():
        rpb.table.normal_()
    bias = rpb(4, 4)
    assert bias.shape == (1, 3, 17, 17)
    cells = [(r, c) for r in range(4) for c in range(4)]
    for i, (r1, c1) in enumerate(cells):
        for j, (r2, c2) in enumerate(cells):
            row = offset_row(r1 - r2, c1 - c2, 4)
            torch.testing.assert_close(bias[0, :, 1 + i, 1 + j], rpb.table[row])
    n = 7 * 7
    torch.testing.assert_close(bias[0, :, 0, 1:], rpb.table[n][:, None].expand(3, 16))
    torch.testing.assert_close(bias[0, :, 1:, 0], rpb.table[n + 1][:, None].expand(3, 16))
    torch.testing.assert_close(bias[0, :, 0, 0], rpb.table[n + 2])


def test_kept_tokens_get_the_rows_and_columns_of_their_positions():
    torch.manual_seed(0)
    rpb = RelativePositionBias(4, heads=2)
    with torch.no_grad():
        rpb.table.normal_()
    full = rpb(4, 4)[0]
    keep = torch.tensor([[5, 0, 9], [15, 3, 4]])
    kept = rpb(4, 4, keep)
    assert kept.shape == (2, 2, 4, 4)
    for b in range(2):
        rows = torch.cat([torch.tensor([0]), keep[b] + 1])
        torch.testing.assert_close(kept[b], full[:, rows][:, :, rows])


def test_a_smaller_grid_reads_the_same_offsets_and_a_larger_one_stretches_the_table():
    torch.manual_seed(0)
    rpb = RelativePositionBias(4, heads=2)
    with torch.no_grad():
        rpb.table.normal_()
    small = rpb(2, 3)  # patch (0, 0) is token 1, patch (1, 2) token 6
    assert small.shape == (1, 2, 7, 7)
    torch.testing.assert_close(small[0, :, 1, 6], rpb.table[offset_row(-1, -2, 4)])
    torch.testing.assert_close(small[0, :, 6, 1], rpb.table[offset_row(1, 2, 4)])
    with torch.no_grad():  # a bias constant over offsets stays that constant when stretched
        rpb.table[:49] = torch.tensor([0.5, -2.0])
    large = rpb(6, 6)
    assert large.shape == (1, 2, 37, 37)
    torch.testing.assert_close(
        large[0, :, 1:, 1:], torch.tensor([0.5, -2.0])[:, None, None].expand(2, 36, 36)
    )
    torch.testing.assert_close(large[0, :, 0, 0], rpb.table[51])


def test_attention_adds_the_bias_to_the_logits():
    torch.manual_seed(0)
    attn = Attention(8, heads=2)
    x = torch.randn(3, 5, 8)
    bias = torch.randn(1, 2, 5, 5)
    q, k, v = attn.qkv(x).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    weights = F.softmax(q @ k.transpose(-1, -2) / 4**0.5 + bias, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(x, bias), expected)


def test_without_a_bias_the_encoder_cannot_tell_where_a_patch_is():
    # no absolute embedding and a zero table: shuffling the patches shuffles the tokens the same
    # way and leaves the CLS token alone; a learned table breaks that, as positions should
    torch.manual_seed(0)
    model = tiny().eval()
    assert model.pos_embed is None and not model.rel_pos_bias.table.any()
    x = torch.randn(2, 3, 16, 16)
    perm = torch.randperm(16)
    cells = x.reshape(2, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3, 4, 4)
    shuffled = cells[:, perm].reshape(2, 4, 4, 3, 4, 4).permute(0, 3, 1, 4, 2, 5)
    shuffled = shuffled.reshape(2, 3, 16, 16)
    a, b = model.forward_tokens(x), model.forward_tokens(shuffled)
    torch.testing.assert_close(b[:, 1:], a[:, 1:][:, perm])
    torch.testing.assert_close(b[:, 0], a[:, 0])
    with torch.no_grad():
        model.rel_pos_bias.table.normal_()
    a, b = model.forward_tokens(x), model.forward_tokens(shuffled)
    assert not torch.allclose(b[:, 0], a[:, 0], atol=1e-4)


def test_one_table_for_all_blocks_learns_and_is_saved():
    torch.manual_seed(0)
    model = tiny()
    model.enable_mask_token()
    state = model.state_dict()
    assert "rel_pos_bias.table" in state and "rel_pos_bias.index" not in state
    assert "pos_embed" not in state
    assert sum(1 for n, _ in model.named_parameters() if "rel_pos_bias" in n) == 1
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :8] = True
    model.forward_tokens(x, mask=mask)[:, 1:].pow(2).mean().backward()
    assert model.rel_pos_bias.table.grad.abs().sum() > 0
    copy = tiny()
    copy.enable_mask_token()
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.forward_tokens(x), model.forward_tokens(x))


def test_dropping_tokens_with_the_bias_keeps_dropped_patches_out():
    torch.manual_seed(0)
    model = tiny().eval()
    with torch.no_grad():
        model.rel_pos_bias.table.normal_()
    x = torch.randn(2, 3, 16, 16)
    keep = torch.tensor([[5, 0, 9], [15, 3, 4]])
    y = x.clone()
    y[:, :, 12:16, 8:12] += 5  # patch 14, dropped in both samples
    torch.testing.assert_close(
        model.forward_tokens(x, keep=keep), model.forward_tokens(y, keep=keep)
    )
    assert model.forward_tokens(x, keep=keep).shape == (2, 4, 16)


def test_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 16) and torch.isfinite(out.float()).all()


def test_config_names_it_and_refuses_unknown_kinds():
    def backbone(kind: str) -> dict:
        return {"method": "simmim", "backbone": {"name": "vit_tiny", "vit": {"pos_embed": kind}}}

    assert build_config(backbone("relative")).backbone.vit.pos_embed == "relative"
    with pytest.raises(ConfigError, match="pos_embed"):
        build_config(backbone("rope"))
    with pytest.raises(ValueError, match="pos_embed must be sincos, learned or relative"):
        tiny(pos_embed="rope")
