"""BYOL's and SimSiam's prediction losses."""

import pytest
import torch

from ssl_models.losses import byol_loss, simsiam_loss

# cosines 0, 1 and 24/25 between the rows
P = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
Z = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]])


def test_byol_known_answer():
    # 2 − 2·cos per row: 2, 0, 0.08
    assert byol_loss(P, Z).item() == pytest.approx((2 + 0 + 0.08) / 3, rel=1e-6)
    assert byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 0.0]])).item() == (
        pytest.approx(4.0)
    )


def test_simsiam_known_answer():
    assert simsiam_loss(P, Z).item() == pytest.approx(-(0 + 1 + 0.96) / 3, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss])
def test_symmetric_in_value_and_scale_invariant(loss_fn):
    torch.manual_seed(0)
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    assert loss_fn(p, z).item() == pytest.approx(loss_fn(z, p).item(), rel=1e-6)
    assert loss_fn(4 * p, 0.5 * z).item() == pytest.approx(loss_fn(p, z).item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss])
def test_no_gradient_into_the_target(loss_fn):
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    loss_fn(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss])
def test_errors_and_batch_of_one(loss_fn):
    with pytest.raises(ValueError, match="same"):
        loss_fn(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="same"):
        loss_fn(torch.randn(8), torch.randn(8))
    with pytest.raises(ValueError, match="empty batch"):
        loss_fn(torch.randn(0, 8), torch.randn(0, 8))
    # per-sample losses: one image is a complete, valid batch
    one = torch.tensor([[1.0, 0.0]])
    assert loss_fn(one, one).item() == pytest.approx(0.0 if loss_fn is byol_loss else -1.0)
