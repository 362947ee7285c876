import math

import pytest
import torch

from ssl_models.losses import jigsaw_loss, relative_loc_loss, rotation_loss

CASES = [(rotation_loss, 4), (relative_loc_loss, 8), (jigsaw_loss, 100)]


@pytest.mark.parametrize("loss_fn, classes", CASES)
def test_uniform_logits_cost_log_classes(loss_fn, classes):
    targets = torch.tensor([0, classes - 1, classes // 2])
    loss = loss_fn(torch.zeros(3, classes), targets)
    assert loss.item() == pytest.approx(math.log(classes), rel=1e-6)


@pytest.mark.parametrize("loss_fn, classes", CASES)
def test_batch_of_one_is_the_cross_entropy_of_its_target(loss_fn, classes):
    # logits 2 for the target, 0 elsewhere: -log(e² / (e² + C - 1))
    logits = torch.zeros(1, classes)
    logits[0, 1] = 2.0
    expected = -math.log(math.exp(2) / (math.exp(2) + classes - 1))
    assert loss_fn(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    # and it is the mean over the batch: a second, certain example halves it
    logits2 = torch.cat([logits, torch.full((1, classes), -50.0)])
    logits2[1, 0] = 50.0
    assert loss_fn(logits2, torch.tensor([1, 0])).item() == pytest.approx(expected / 2, rel=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="rotation_loss: expected 4 classes, got logits with 3"):
        rotation_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"relative_loc_loss: expected targets \(N,\) = \(2,\)"):
        relative_loc_loss(torch.zeros(2, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"jigsaw_loss: targets must lie in \[0, 9\]"):
        jigsaw_loss(torch.zeros(2, 10), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="integer class indices"):
        rotation_loss(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected logits \(N, C\)"):
        jigsaw_loss(torch.zeros(2, 3, 4), torch.tensor([0, 1]))
