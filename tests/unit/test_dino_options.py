"""DINO's options beyond its recipe, each an ablation DINOv2 motivates: Sinkhorn-Knopp targets
in place of the centre, and the KoLeo regulariser."""

import pytest
import torch

from ssl_models.methods.base import Progress
from tests.method_helpers import assert_backbone_grads_differ_by, tiny_batch, tiny_method
from tests.unit.one_thread import one_thread  # noqa: F401


def test_dino_sinkhorn_centering_uses_balanced_codes_of_the_teacher_as_targets():
    from ssl_models.losses import dino_loss_from_targets, sinkhorn

    method = tiny_method("dino", centering="sinkhorn_knopp")
    batch = tiny_batch()
    method.on_step_start(Progress(0, 20, 5))
    out = method(batch)
    with torch.no_grad():
        teacher = method.teacher_head(
            method.teacher_backbone(batch["global"].transpose(0, 1).flatten(0, 1))
        )
    codes = sinkhorn(teacher, method.teacher_temp, 3)
    torch.testing.assert_close(codes.sum(1), torch.ones(len(codes)))  # a distribution per row
    student = method.head(
        torch.cat(
            [
                method.backbone(x.transpose(0, 1).flatten(0, 1))
                for x in (batch["global"], batch["local"])
            ]
        )
    )
    expected = dino_loss_from_targets(student.chunk(4), codes.chunk(2), method.cfg.student_temp)
    torch.testing.assert_close(out["loss"], expected)
    # the centre is not used: a different centre leaves the loss unchanged
    method.center.center.fill_(5.0)
    torch.testing.assert_close(method(batch)["loss"], out["loss"])
    with pytest.raises(ValueError, match=r"centering must be centre\|sinkhorn_knopp, got .mean."):
        tiny_method("dino", centering="mean")


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
