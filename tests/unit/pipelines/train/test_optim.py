"""Optimisers and parameter groups: LARS by hand, exclusion, fixed-lr and undecayed groups,
lr and wd schedules."""

import pytest
import torch
from torch import nn

from pipelines.config.schema import OptimConfig
from pipelines.train.optim import (
    LARS,
    build_optimizer,
    clip_grad_per_parameter_,
    param_groups,
    scaled_lr,
    set_lr,
    set_weight_decay,
)


class Tiny(nn.Module):
    """weight (1, 2) = [[3, 4]] (norm 5), bias (1,) = [1], a BatchNorm, and a predictor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)
        self.predictor = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[3.0, 4.0]]))
            self.fc.bias.fill_(1.0)


def group_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_lars_step_by_hand_and_excluded_parameters_plain():
    model = Tiny()
    opt = LARS(param_groups(model, 0.1, True), lr=1.0, momentum=0.9, eta=0.001)
    model.fc.weight.grad = torch.tensor([[0.6, 0.8]])  # norm 1
    model.fc.bias.grad = torch.tensor([0.5])
    opt.step()
    # g = grad + 0.1·p = [0.9, 1.2] (norm 1.5); trust = 0.001·5/1.5; p -= 1·trust·g
    assert model.fc.weight.detach() == pytest.approx(torch.tensor([[2.997, 3.996]]), abs=1e-7)
    # bias: no decay, no trust ratio: p -= lr·grad
    assert model.fc.bias.item() == pytest.approx(0.5)
    # second step: momentum buffer = 0.9·v + g' with g' from the new weights
    w = torch.tensor([[2.997, 3.996]])
    g = torch.tensor([[0.6, 0.8]]) + 0.1 * w
    v = 0.9 * torch.tensor([[0.003, 0.004]]) + 0.001 * w.norm() / g.norm() * g
    opt.step()
    assert model.fc.weight.detach() == pytest.approx(w - v, abs=1e-7)


def test_bias_and_norm_excluded_from_decay_with_adamw():
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(name="adamw", base_lr=0.256, weight_decay=0.5), 256)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only decoupled weight decay can move anything
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    # regular weights shrink by (1 - lr·wd); biases and norm parameters do not move
    assert after["fc.weight"].detach() == pytest.approx(before["fc.weight"] * (1 - 0.256 * 0.5))
    for name in ("fc.bias", "bn.weight", "bn.bias", "predictor.bias"):
        assert torch.equal(after[name], before[name]), name
    assert group_of(opt, model.bn.weight)["weight_decay"] == 0.0
    assert group_of(opt, model.bn.weight)["lars_exclude"] is True


def test_exclusion_can_be_turned_off():
    groups = param_groups(Tiny(), 0.1, exclude_bias_and_norm=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1 and not groups[0]["lars_exclude"]


def test_lr_scales_with_global_batch():
    assert scaled_lr(OptimConfig(base_lr=0.3), 4096) == pytest.approx(4.8)
    assert scaled_lr(OptimConfig(base_lr=0.3), 128) == pytest.approx(0.15)


def test_fixed_lr_modules_keep_the_peak_lr():
    model = Tiny()
    model.fixed_lr_modules = ("predictor",)
    opt = build_optimizer(model, OptimConfig(name="sgd", base_lr=0.5), 256)
    set_lr(opt, 0.01)
    assert group_of(opt, model.predictor.weight)["lr"] == 0.5
    assert group_of(opt, model.predictor.bias)["lr"] == 0.5
    assert group_of(opt, model.predictor.bias)["weight_decay"] == 0.0  # still a bias
    assert group_of(opt, model.fc.weight)["lr"] == 0.01


def test_bias_lr_ratio_follows_the_schedule_on_bias_and_norm_groups_only():
    # Barlow Twins' main.py: lr_biases = 0.0048 / 0.2 of lr_weights at every step
    model = Tiny()
    model.fixed_lr_modules = ("predictor",)
    opt = build_optimizer(model, OptimConfig(name="lars", base_lr=0.2, bias_lr_ratio=0.024), 512)
    assert group_of(opt, model.fc.weight)["lr"] == pytest.approx(0.4)
    assert group_of(opt, model.fc.bias)["lr"] == pytest.approx(0.4 * 0.024)
    assert group_of(opt, model.bn.weight)["lr"] == pytest.approx(0.4 * 0.024)
    assert group_of(opt, model.predictor.bias)["lr"] == pytest.approx(0.4 * 0.024)  # fixed
    set_lr(opt, 0.1)
    assert group_of(opt, model.fc.weight)["lr"] == pytest.approx(0.1)
    assert group_of(opt, model.fc.bias)["lr"] == pytest.approx(0.1 * 0.024)
    assert group_of(opt, model.predictor.weight)["lr"] == pytest.approx(0.4)  # still the peak
    with pytest.raises(ValueError, match=r"bias_lr_ratio 0\.5 needs optim\.exclude_bias_and_norm"):
        build_optimizer(model, OptimConfig(bias_lr_ratio=0.5, exclude_bias_and_norm=False), 256)


def test_fixed_lr_modules_names_an_unknown_module():
    model = Tiny()
    model.fixed_lr_modules = ("predictr",)
    with pytest.raises(AttributeError, match="predictr"):
        param_groups(model, 0.1, True)


def test_weight_decay_cosine_keeps_excluded_at_zero():
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.04), 256)
    assert set_weight_decay(opt, 0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert set_weight_decay(opt, 50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert group_of(opt, model.fc.weight)["weight_decay"] == pytest.approx(0.22)
    assert set_weight_decay(opt, 100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert group_of(opt, model.fc.weight)["weight_decay"] == pytest.approx(0.4)
    assert group_of(opt, model.fc.bias)["weight_decay"] == 0.0


def test_clip_grad_per_parameter_bounds_each_tensor_on_its_own():
    # DINO's and iBOT's clip_gradients: norms 10 and 1 at max 3 become 3 and 1 (a global clip
    # would scale both by 3 / sqrt(101))
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad, b.grad = torch.tensor([6.0, 8.0]), torch.tensor([0.6, 0.8])
    largest = clip_grad_per_parameter_([a, b, c], 3.0)
    assert float(largest) == pytest.approx(10.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.8, 2.4]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.6, 0.8]))
    assert c.grad is None


def test_no_weight_decay_names_keep_their_modules_fixed_lr():
    model = Tiny()
    model.no_weight_decay = ("predictor.weight",)
    model.fixed_lr_modules = ("predictor",)
    opt = build_optimizer(model, OptimConfig(name="adamw", base_lr=0.256, weight_decay=0.3), 256)
    set_lr(opt, 1.0)
    group = group_of(opt, model.predictor.weight)
    assert (group["weight_decay"], group["initial_weight_decay"]) == (0.0, 0.0)
    assert group["lr"] == pytest.approx(0.256)  # still outside the schedule
    assert group["params"] == [model.predictor.weight]
    assert group_of(opt, model.fc.weight)["weight_decay"] == 0.3
    # the decay schedule leaves it at zero
    set_weight_decay(opt, 50, 100, 0.3, 0.6)
    assert group_of(opt, model.predictor.weight)["weight_decay"] == 0.0
    assert group_of(opt, model.fc.weight)["weight_decay"] == pytest.approx(0.45)


def test_no_weight_decay_names_an_unknown_parameter():
    model = Tiny()
    model.no_weight_decay = ("fc.weights",)
    with pytest.raises(ValueError, match=r"Tiny.no_weight_decay: no parameter named 'fc.weights'"):
        param_groups(model, 0.1, True)
