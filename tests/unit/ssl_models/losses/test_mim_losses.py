import math

import pytest
import torch

from ssl_models.losses import beit_loss, cae_alignment_loss, cae_loss, mae_loss, simmim_loss


def test_mae_loss_one_patch_known_answer():
    # target [1, 2, 3, 4]: mean 2.5, unbiased variance 5/3; the normalised target has squared
    # sum 3 · var / (var + 1e-6) over 4 values, so a zero prediction costs 3/4 (minus the eps)
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    pred = torch.zeros_like(target)
    mask = torch.ones(1, 1)
    var = 5 / 3
    expected = 0.75 * var / (var + 1e-6)
    assert mae_loss(pred, target, mask).item() == pytest.approx(expected, rel=1e-7)
    # without normalisation: plain mean squared error (1 + 4 + 9 + 16) / 4
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(7.5)
    # predicting the normalised target exactly costs nothing
    normalised = (target - 2.5) / math.sqrt(var + 1e-6)
    assert mae_loss(normalised, target, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_mae_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss = mae_loss(pred, target, mask, norm_pix=False)
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = (per_patch[0, 0] + per_patch[1, 1] + per_patch[1, 2]) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = pred.clone()
    changed[0, 1:] += 10.0
    changed[1, 0] -= 10.0
    assert mae_loss(changed, target, mask).item() == pytest.approx(
        mae_loss(pred, target, mask).item()
    )
    pred.requires_grad_(True)
    mae_loss(pred, target, mask).backward()
    assert (pred.grad[mask == 0] == 0).all() and (pred.grad[mask == 1] != 0).any()


def test_mae_loss_batch_of_one_and_errors():
    pred, target = torch.randn(1, 4, 12), torch.randn(1, 4, 12)
    assert torch.isfinite(mae_loss(pred, target, torch.ones(1, 4)))
    with pytest.raises(ValueError, match="same shape"):
        mae_loss(pred, torch.randn(1, 4, 11), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"mask must be \(N, L\)"):
        mae_loss(pred, target, torch.ones(1, 5))
    with pytest.raises(ValueError, match="no masked patch"):
        mae_loss(pred, target, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2 values"):
        mae_loss(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1), torch.ones(1, 4))


def test_simmim_loss_known_answer_on_masked_pixels_only():
    target = torch.full((1, 3, 2, 2), 2.0)
    pred = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 2 masked pixels × 3 channels, |error| 2
    expected = (2.0 * 3 * 2) / (2 + 1e-5) / 3
    assert simmim_loss(pred, target, mask).item() == pytest.approx(expected, rel=1e-7)
    pred[0, :, 0, 1] = 100.0  # an unmasked pixel
    assert simmim_loss(pred, target, mask).item() == pytest.approx(expected, rel=1e-7)


def test_simmim_loss_errors():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        simmim_loss(x, torch.zeros(2, 3, 4, 5), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"mask must be \(N, H, W\)"):
        simmim_loss(x, x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="no masked pixel"):
        simmim_loss(x, x, torch.zeros(2, 4, 4))
    assert simmim_loss(x[:1], x[:1] + 1, torch.ones(1, 4, 4)).item() == pytest.approx(1.0, rel=1e-5)


def test_beit_loss_known_answers():
    k = 8
    uniform = torch.zeros(5, k)
    codes = torch.tensor([0, 3, 7, 1, 2])
    assert beit_loss(uniform, codes).item() == pytest.approx(math.log(k))
    confident = torch.full((5, k), -50.0)
    confident[torch.arange(5), codes] = 50.0
    assert beit_loss(confident, codes).item() == pytest.approx(0.0, abs=1e-6)
    # one patch, logits [0, ln 3]: p(code 1) = 3/4
    assert beit_loss(torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])).item() == (
        pytest.approx(-math.log(0.75))
    )


def test_beit_loss_errors():
    with pytest.raises(ValueError, match=r"logits \(M, K\) and codes \(M,\)"):
        beit_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no masked patch"):
        beit_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        beit_loss(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer"):
        beit_loss(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))


def test_cae_losses_known_answer_and_stop_gradient():
    logits = torch.zeros(4, 16)
    codes = torch.tensor([1, 2, 3, 4])
    pred = torch.zeros(2, 2, 3, requires_grad=True)
    target = torch.full((2, 2, 3), 0.5, requires_grad=True)
    assert cae_alignment_loss(pred, target).item() == pytest.approx(0.25)
    total = cae_loss(logits, codes, pred, target, align_weight=2.0)
    assert total.item() == pytest.approx(math.log(16) + 2 * 0.25)
    total.backward()
    assert target.grad is None  # the encoder's representation of masked patches is a target
    torch.testing.assert_close(pred.grad, torch.full((2, 2, 3), 2 * 2 * -0.5 / 12))
    with pytest.raises(ValueError, match="shapes differ"):
        cae_alignment_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))
