"""iBOT's option beyond the recipe, DINOv2's KoLeo term (the laptop profile uses it), on the
tiny ViT of ``test_ibot_dinov2_methods``."""

import torch

from ssl_models.methods.base import Progress
from tests.unit.ssl_models.methods.test_ibot_dinov2_methods import batch, build


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
