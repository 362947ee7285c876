"""Heads (shapes at batch sizes 1 and 2, DINO's normalised last layer), momentum updates, and
the base method's hooks: EMA of the declared momentum pairs, layers frozen at the start."""

import copy

import pytest
import torch
from torch import nn

from ssl_models.heads import DINOHead, mlp
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.momentum import cosine_momentum, momentum_copy, update_momentum

# BatchNorm heads cannot normalise a batch of one in training mode (PyTorch refuses), so batch
# size 1 is checked in eval mode, where they use their running statistics; 2 in both modes.
HEADS = {
    "linear (MoCo v1)": lambda: mlp(16, 32, 8, num_layers=1),
    "MLP without BN (MoCo v2)": lambda: mlp(16, 32, 8, 2, batch_norm=False),
    "2-layer BN (BYOL, MoCo v3 predictor)": lambda: mlp(16, 32, 8, 2),
    "3-layer BN + last BN (SimCLR v2, SimSiam)": lambda: mlp(
        16, 32, 8, 3, last_batch_norm=True, last_bias=False
    ),
    "DINO": lambda: DINOHead(16, 8, hidden_dim=32, bottleneck_dim=4),
    "DINO with BN": lambda: DINOHead(16, 8, hidden_dim=32, bottleneck_dim=4, use_bn=True),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_output_shapes(name):
    head = HEADS[name]()
    head.train()
    assert head(torch.randn(2, 16)).shape == (2, 8)
    head.eval()
    for n in (1, 2):
        assert head(torch.randn(n, 16)).shape == (n, 8)


def test_mlp_layout():
    head = mlp(16, 32, 8, 3, last_batch_norm=True, last_bias=False, activation=nn.GELU)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear", "BatchNorm1d"]
    assert head[0].bias is None and head[-2].bias is None and not head[-1].affine
    with pytest.raises(ValueError, match="num_layers must be at least 1"):
        mlp(4, 4, 4, num_layers=0)


def test_dino_last_layer_is_a_cosine_to_unit_directions():
    torch.manual_seed(0)
    head = DINOHead(16, 8, hidden_dim=32, bottleneck_dim=4, norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad  # the norm is fixed at 1, not trained
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(8))
    # inputs of any scale give outputs bounded by 1: normalised bottleneck · unit rows
    out = head(100 * torch.randn(5, 16))
    assert out.abs().max() <= 1 + 1e-5
    free = DINOHead(16, 8, hidden_dim=32, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    # the weight-normalised layer survives deepcopy (the teacher is a copy of the student)
    x = torch.randn(3, 16)
    torch.testing.assert_close(copy.deepcopy(head)(x), head(x))


def test_update_momentum_at_the_ends_and_in_between():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in ema.parameters()]
    update_momentum(model, ema, 1.0)  # teacher unchanged
    for p, b in zip(ema.parameters(), before, strict=True):
        torch.testing.assert_close(p, b, rtol=0, atol=0)
    update_momentum(model, ema, 0.25)
    for p, b, s in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(p, 0.25 * b + 0.75 * s)
    update_momentum(model, ema, 0.0)  # teacher becomes the student
    for p, s in zip(ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, s, rtol=0, atol=0)


def test_update_momentum_errors():
    with pytest.raises(ValueError, match="same parameters"):
        update_momentum(nn.Linear(3, 2), nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError, match=r"m must lie in \[0, 1\]"):
        update_momentum(nn.Linear(3, 2), nn.Linear(3, 2), 1.5)


def test_momentum_copy_is_equal_and_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = momentum_copy(model)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for p, q in zip(model.parameters(), ema.parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_momentum_copy_of_a_vit_runs_without_stochastic_depth():
    # DINO's, iBOT's and DINOv2's teachers are built without drop_path_rate (main_dino.py,
    # main_ibot.py, dinov2/models/__init__.py build_model): the student's is the only one
    from ssl_models.backbones import build_backbone

    torch.manual_seed(0)
    student = build_backbone(
        "vit_tiny", image_size=8, patch_size=4, dim=8, depth=2, heads=2, drop_path=0.5
    )
    teacher = momentum_copy(student)
    assert [b.drop_path for b in student.blocks] == [0.0, 0.5]  # the student keeps its own
    assert [b.drop_path for b in teacher.blocks] == [0.0, 0.0]
    x = torch.randn(16, 3, 8, 8)
    student.train(), teacher.train()
    torch.testing.assert_close(teacher(x), teacher(x), rtol=0, atol=0)
    assert not torch.equal(student(x), student(x))


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(0.5, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.3, 0.999, 0.999) == pytest.approx(0.999)  # MoCo v1/v2: constant


def test_dino_head_init_is_the_references_on_the_mlp_not_the_last_layer():
    torch.manual_seed(0)
    head = DINOHead(256, 64, hidden_dim=512, bottleneck_dim=128)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for m in linears:  # truncated normal, std 0.02, zero bias
        assert abs(float(m.weight.detach().std()) - 0.02) < 0.05 * 0.02
        assert float(m.bias.detach().abs().max()) == 0.0
    # the last layer keeps nn.Linear's default init: rows of U(-1/sqrt(128), 1/sqrt(128)) have
    # std 1/sqrt(3·128) before normalisation
    v = head.last_layer.parametrizations.weight.original1.detach()
    assert abs(float(v.std()) - (3 * 128) ** -0.5) < 0.01


class TwoPairs(SSLMethod):
    """Two momentum pairs (a, b), a module without a copy (free); b is frozen for 1.5 epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.free = nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(2, 1)
        self.a_ema, self.b_ema = momentum_copy(self.a), momentum_copy(self.b)
        self.momentum_schedule = (0.5, 1.0)
        self.frozen_epochs = 1.5

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.a, self.a_ema), (self.b, self.b_ema)]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.b]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        return {"loss": (self.b(self.a(x)) + self.free(x)).square().mean()}


def test_base_hook_moves_every_declared_pair_by_the_scheduled_momentum():
    method = TwoPairs()
    with torch.no_grad():
        for online, ema in method.momentum_pairs():
            for p, q in zip(online.parameters(), ema.parameters(), strict=True):
                p.fill_(1.0)
                q.fill_(0.0)
    free = _params(method.free)
    # m = 1 − (1 − 0.5)·(cos(π·k/10) + 1)/2: 0.5 at k = 0, 0.75 at k = 5, 1 at k = 10
    for step, m, expected in ((0, 0.5, 0.5), (5, 0.75, 0.75 * 0.5 + 0.25), (10, 1.0, 0.625)):
        progress = Progress(step, 10, 2)
        assert method.on_step_start(progress) == {"momentum": pytest.approx(m)}
        method.on_step_end({}, progress)
        for online, ema in method.momentum_pairs():
            for p, q in zip(online.parameters(), ema.parameters(), strict=True):
                torch.testing.assert_close(q, torch.full_like(q, expected))
                assert torch.equal(p, torch.ones_like(p))  # the online side is only read
    assert all(torch.equal(a, b) for a, b in zip(free, _params(method.free), strict=True))


def test_frozen_modules_get_no_update_during_their_epochs_and_do_after():
    torch.manual_seed(0)
    method = TwoPairs()  # 1.5 epochs of 2 steps: steps 0, 1 and 2 frozen
    opt = torch.optim.AdamW(method.parameters(), lr=0.1, weight_decay=0.5)
    batch = {"x": torch.randn(4, 2)}
    for step in range(4):
        before = {name: _params(getattr(method, name)) for name in ("a", "b", "free")}
        progress = Progress(step, 4, 2)
        opt.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        method.on_after_backward(progress)
        opt.step()
        moved = {
            name: any(
                not torch.equal(x, y)
                for x, y in zip(old, _params(getattr(method, name)), strict=True)
            )
            for name, old in before.items()
        }
        # frozen: not even weight decay or Adam's state touches b
        assert moved == {"a": True, "b": step >= 3, "free": True}, step


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]
