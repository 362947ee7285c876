"""iBOT's options beyond the recipe: the head's init and BatchNorm, Sinkhorn-Knopp targets in
place of the centres (also with a worker that drew no mask), and the KoLeo term; on the tiny
ViT of ``test_ibot_dinov2_methods``."""

import pytest
import torch

from ssl_models.methods.base import Progress
from tests.distributed_helpers import run_distributed
from tests.unit.one_thread import one_thread  # noqa: F401
from tests.unit.test_ibot_dinov2_methods import batch, build, step


def test_ibot_head_init_std_reaches_the_shared_head():
    for std in (0.02, 0.1):
        first = build("ibot", head_init_std=std).head.mlp[0].weight.detach()
        assert abs(float(first.std()) - std) < 0.2 * std


def test_ibot_use_bn_in_head_puts_batchnorm_in_the_shared_heads_mlp():
    kinds = {type(m).__name__ for m in build("ibot", use_bn_in_head=True).head.mlp}
    assert "BatchNorm1d" in kinds
    assert "BatchNorm1d" not in {type(m).__name__ for m in build("ibot").head.mlp}
    method = build("ibot", use_bn_in_head=True)
    out = step(method, batch(), Progress(0, 10, 5))
    assert torch.isfinite(out["loss"])


def test_ibot_sinkhorn_knopp_targets_replace_the_centres():
    # the teacher's [CLS] outputs of both crops, and its outputs at the masked patches, become
    # Sinkhorn-Knopp codes; the centres no longer enter the loss
    from ssl_models.losses import dino_loss_from_targets, masked_patch_loss, sinkhorn

    method = build("ibot", centering="sinkhorn_knopp", mask_probability=1.0)
    seen = {}
    method.teacher_head.register_forward_hook(lambda m, i, o: seen.__setitem__("t", o))
    # the first call sees the global crops (a hook returning a value would replace the output)
    method.head.register_forward_hook(lambda m, i, o: None if "s" in seen else seen.update(s=o))
    x = batch()
    progress = Progress(1, 10, 5)
    method.on_step_start(progress)
    masks = method.masks(x["global"].transpose(0, 1).flatten(0, 1))  # forward's own masks
    method.on_step_start(progress)
    out = method(x)
    t, s = seen["t"].unflatten(0, (8, -1)), seen["s"].unflatten(0, (8, -1))  # (2B, 1 + L, K)
    codes = sinkhorn(t[:, 0], method.teacher_temp, 3)
    assert codes.sum(1).allclose(torch.ones(8))
    local = method.head(
        method.backbone.forward_tokens(x["local"].transpose(0, 1).flatten(0, 1))[:, 0]
    )
    students = list(s[:, 0].chunk(2)) + list(local.chunk(2))
    torch.testing.assert_close(out["cls_loss"], dino_loss_from_targets(students, codes.chunk(2)))
    patch_codes = sinkhorn(t[:, 1:][masks], method.teacher_patch_temp, 3)
    expected = masked_patch_loss(s[:, 1:][masks], patch_codes, masks)
    torch.testing.assert_close(out["patch_loss"], expected.detach())
    # the centres are kept (and logged) but do not move the loss
    method.center.center.fill_(3.0)
    method.patch_center.center.normal_()
    method.on_step_start(progress)
    again = method(x)
    torch.testing.assert_close(again["cls_loss"], out["cls_loss"])
    torch.testing.assert_close(again["patch_loss"], out["patch_loss"])
    with pytest.raises(ValueError, match=r"ibot: centering must be centre\|sinkhorn_knopp"):
        build("ibot", centering="sinkhorn")


def _ibot_sinkhorn_one_worker_unmasked(rank: int, world: int) -> list[torch.Tensor]:
    # worker 0 masks nothing, worker 1 every crop; each builds the same weights and seed
    kwargs = dict(centering="sinkhorn_knopp", mask_probability=float(rank))
    x = {k: v.chunk(world)[rank] for k, v in batch(n=4).items()}
    progress = Progress(1, 10, 5)
    method = build("ibot", **kwargs)
    method.on_step_start(progress)
    out = method(x)
    out["loss"].backward()
    # the same worker's crops and masks with its own patch codes only (no collective)
    alone = build("ibot", gather_distributed=False, **kwargs)
    alone.on_step_start(progress)
    return [out["patch_loss"], alone(x)["patch_loss"], out["masked_fraction"]]


def test_ibot_sinkhorn_patch_codes_with_a_worker_that_drew_no_mask():
    # the unmasked worker still joins the patch Sinkhorn (with no rows) instead of leaving the
    # other waiting in its collectives; the masked worker's codes are then its own patches'
    (unmasked, _, none), (masked, alone, some) = run_distributed(
        _ibot_sinkhorn_one_worker_unmasked, world=2
    )
    assert none.item() == 0.0 and some.item() > 0.0
    assert unmasked.item() == 0.0 and masked.item() > 0.0
    torch.testing.assert_close(masked, alone)


def test_ibot_koleo_adds_its_weighted_term_to_the_same_losses():
    from ssl_models.losses import koleo_loss

    progress = Progress(1, 10, 5)
    plain, with_koleo = build("ibot"), build("ibot", koleo_weight=0.5)
    plain.on_step_start(progress)
    with_koleo.on_step_start(progress)
    a, b = plain(batch()), with_koleo(batch())
    assert "koleo_loss" not in a
    torch.testing.assert_close(a["loss"], a["cls_loss"] + a["patch_loss"])
    torch.testing.assert_close(b["cls_loss"], a["cls_loss"])
    torch.testing.assert_close(b["patch_loss"], a["patch_loss"])
    torch.testing.assert_close(b["loss"], a["loss"] + 0.5 * b["koleo_loss"])
    # on the student's backbone [CLS] of each global crop, never across the two crops
    with_koleo.on_step_start(progress)
    masks = with_koleo.masks(batch()["global"].transpose(0, 1).flatten(0, 1))
    crops = batch()["global"].transpose(0, 1).flatten(0, 1)
    cls = with_koleo.backbone.forward_tokens(crops, mask=masks)[:, 0]
    first, second = cls.chunk(2)
    expected = koleo_loss(first) + koleo_loss(second)
    torch.testing.assert_close(b["koleo_loss"], expected.detach())
