"""DINO's option beyond its recipe: DINOv2's KoLeo regulariser, which the laptop profile uses."""

import torch

from ssl_models.methods.base import Progress
from tests.method_helpers import assert_backbone_grads_differ_by, tiny_batch, tiny_method


def test_dino_koleo_adds_its_weighted_term_on_each_global_crop():
    from ssl_models.losses import koleo_loss

    progress = Progress(0, 20, 5)
    plain, with_koleo = tiny_method("dino"), tiny_method("dino", koleo_weight=0.5)
    plain.on_step_start(progress)
    with_koleo.on_step_start(progress)
    batch = tiny_batch()
    a, b = plain(batch), with_koleo(batch)
    assert "koleo_loss" not in a
    # same weights (same seed): the DINO term is unchanged and KoLeo is added with its weight
    torch.testing.assert_close(b["loss"], a["loss"] + 0.5 * b["koleo_loss"])
    # on the student's backbone features of each global crop, never across the two crops of
    # an image (they would be each other's nearest neighbours) and never on the local crops
    crops = batch["global"].transpose(0, 1).flatten(0, 1)  # (2B, 3, S, S), view-major
    first, second = with_koleo.backbone(crops).chunk(2)
    expected = koleo_loss(first) + koleo_loss(second)
    torch.testing.assert_close(b["koleo_loss"], expected.detach())
    assert not torch.allclose(b["koleo_loss"], koleo_loss(with_koleo.backbone(crops)))
    # its gradient reaches the student's backbone: the two losses' gradients differ by exactly
    # the weighted KoLeo gradient
    a["loss"].backward()
    b["loss"].backward()
    assert_backbone_grads_differ_by(plain, with_koleo, 0.5 * expected)
