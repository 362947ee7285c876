import dataclasses

import pytest
import torch

from ssl_models.backbones import build_backbone
from ssl_models.heads import Prototypes
from ssl_models.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from ssl_models.methods.base import Progress
from ssl_models.methods.swav import SwAV, SwAVConfig
from ssl_models.methods.vicreg import VICReg, VICRegConfig
from tests.distributed_helpers import run_distributed

SMALL_SWAV = SwAVConfig(
    num_prototypes=8,
    proj_hidden_dim=32,
    proj_dim=16,
    freeze_prototypes_epochs=0.0,
    queue_length=0,
    gather_distributed=False,
)


def tiny_backbone() -> torch.nn.Module:
    return build_backbone("resnet18", width=0.125, cifar_stem=True, stem_stride=2)


def make(key: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    if key == "swav":
        return SwAV(tiny_backbone(), dataclasses.replace(SMALL_SWAV, **changes))
    cls, cfg = {"barlow_twins": (BarlowTwins, BarlowTwinsConfig), "vicreg": (VICReg, VICRegConfig)}[
        key
    ]
    return cls(tiny_backbone(), cfg(proj_hidden_dim=32, proj_dim=32, **changes))


def batch(b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "global": torch.randn(b, 2, 3, 16, 16, generator=g),
        "local": torch.randn(b, 3, 3, 8, 8, generator=g),
    }


def train_steps(method, data, steps: int, steps_per_epoch: int = 1) -> list[float]:
    """The hooks in TrainStep's order, with plain SGD."""
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        progress = Progress(step, steps, steps_per_epoch)
        method.on_step_start(progress)
        out = method(data)
        opt.zero_grad()
        out["loss"].backward()
        method.on_after_backward(progress)
        opt.step()
        method.on_step_end(out, progress)
        losses.append(out["loss"].item())
    return losses


@pytest.mark.parametrize("key", ["swav", "barlow_twins", "vicreg"])
def test_forward_backward_and_the_loss_falls_on_a_fixed_batch(key):
    method = make(key)
    data = {k: v for k, v in batch().items() if key == "swav" or k == "global"}
    losses = train_steps(method, data, 20)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(torch.count_nonzero(g) for g in grads)


@pytest.mark.parametrize("key", ["swav", "barlow_twins", "vicreg"])
def test_state_dict_round_trip(key):
    method = make(key, **({"queue_length": 16} if key == "swav" else {}))
    train_steps(method, batch(), 2)
    clone = make(key, **({"queue_length": 16} if key == "swav" else {}))
    clone.load_state_dict(method.state_dict())
    method.eval(), clone.eval()
    data = batch(seed=1)
    torch.testing.assert_close(method(data)["loss"], clone(data)["loss"])


@pytest.mark.parametrize("key", ["barlow_twins", "vicreg"])
def test_two_view_methods_reject_other_view_counts(key):
    with pytest.raises(ValueError, match=r"'global' views \(B, 2, 3, S, S\)"):
        make(key)({"global": torch.randn(4, 3, 3, 16, 16)})


def test_prototypes_are_normalised_by_the_hook_not_by_forward():
    method = make("swav")
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method(batch())
    assert not torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(8))
    method.on_step_start(Progress(0, 10, 5))
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(8))


def test_prototypes_are_frozen_during_the_first_epoch_only():
    method = make("swav", freeze_prototypes_epochs=1.0)
    for step, frozen in ((0, True), (4, True), (5, False)):
        method.zero_grad()
        method(batch())["loss"].backward()
        method.on_after_backward(Progress(step, 10, steps_per_epoch=5))
        assert (method.prototypes.weight.grad is None) == frozen
        assert method.projector[0].weight.grad is not None  # only the prototypes freeze


def test_projector_without_batch_norm_is_the_plain_two_layer_head():
    layers = [type(m) for m in make("swav", proj_batch_norm=False).projector]
    assert layers == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert make("swav", proj_batch_norm=False).projector[0].bias is not None
    assert torch.nn.BatchNorm1d in [type(m) for m in make("swav").projector]


def test_queue_starts_at_its_epoch_fills_newest_first_and_joins_sinkhorn_when_full():
    method = make("swav", queue_length=12, queue_start_epoch=1)
    data = batch(b=8)
    out = method(data)
    assert out["queue_used"].item() == 0.0 and out["embeddings"].shape == (2, 8, 16)
    method.on_step_end(out, Progress(0, 10, steps_per_epoch=2))  # epoch 0: not yet
    assert int(method.queue_filled) == 0
    method.on_step_end(out, Progress(2, 10, steps_per_epoch=2))  # epoch 1: fills
    assert int(method.queue_filled) == 8 and not method.queue_ready()
    torch.testing.assert_close(method.queue[:, :8], out["embeddings"])
    out2 = method(batch(b=8, seed=5))
    method.on_step_end(out2, Progress(3, 10, steps_per_epoch=2))
    assert int(method.queue_filled) == 12 and method.queue_ready()
    torch.testing.assert_close(method.queue[:, :8], out2["embeddings"])  # newest first
    torch.testing.assert_close(method.queue[:, 8:], out["embeddings"][:, :4])
    assert method(data)["queue_used"].item() == 1.0
    assert "queue" in method.state_dict() and "queue_filled" in method.state_dict()


def _queue_on_two_workers(rank: int, world: int):
    method = make("swav", queue_length=16, queue_start_epoch=0)
    emb = torch.full((2, 4, 16), float(rank))  # each rank's embeddings, recognisable
    method.on_step_end({"embeddings": emb}, Progress(0, 10, 5))
    return method.queue.clone(), int(method.queue_filled)


def test_queue_receives_every_workers_embeddings():
    (q0, n0), (q1, n1) = run_distributed(_queue_on_two_workers, world=2)
    assert n0 == n1 == 8
    torch.testing.assert_close(q0, q1)  # the same queue everywhere
    assert (q0[:, :4] == 0).all() and (q0[:, 4:8] == 1).all()  # rank order


@pytest.mark.parametrize("b", [1, 2])
def test_prototypes_head_shapes(b):
    head = Prototypes(16, 10)
    assert head(torch.randn(b, 16)).shape == (b, 10) and head.bias is None
    head.normalize_()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))


def _reference_lars_step(model: torch.nn.Module, true_grads: list, batch_size: int) -> None:
    """One first step of facebookresearch/barlowtwins main.py at its flags: lr_weights 0.2 and
    lr_biases 0.0048 (× batch / 256, the schedule at its peak), weight decay 1.5e-6 (the
    paper's), LARS eta 0.001 on tensors of more than one dimension only, the momentum buffer
    starting at the update. Its loss all-reduces c without autograd, so under DDP's average its
    gradient is the true one / world size: 32 GPUs in the paper."""
    scale = batch_size / 256
    with torch.no_grad():
        for p, g in zip(model.parameters(), true_grads, strict=True):
            dp = g / 32
            if p.ndim == 1:
                p.sub_(0.0048 * scale * dp)
            else:
                dp = dp + 1.5e-6 * p
                trust = 0.001 * p.norm() / dp.norm()
                p.sub_(0.2 * scale * trust * dp)


def test_barlow_twins_recipe_steps_as_the_reference_at_its_batch_and_32_gpus():
    import copy

    from pipelines.config.layers import load_config
    from pipelines.train.optim import build_optimizer
    from ssl_models.losses import barlow_twins_loss

    cfg = load_config("barlow_twins", None, {"data": {"path": "x"}})
    args = dataclasses.replace(cfg.method_args, proj_hidden_dim=32, proj_dim=32)
    torch.manual_seed(0)
    method = BarlowTwins(tiny_backbone(), args)
    reference = copy.deepcopy(method)
    views = batch()["global"]

    # the built optimizer's per-group rates at the peak: the reference's flags × batch / 256
    opt = build_optimizer(method, cfg.optim, cfg.train.batch_size)
    rates = {g["lars_exclude"]: g["lr"] for g in opt.param_groups}
    assert rates == pytest.approx({False: 0.2 * 2048 / 256, True: 0.0048 * 2048 / 256})

    opt.zero_grad()
    method({"global": views})["loss"].backward()
    opt.step()

    z1 = reference.projector(reference.backbone(views[:, 0]))
    z2 = reference.projector(reference.backbone(views[:, 1]))
    true_loss = barlow_twins_loss(z1, z2, args.lambda_)
    grads = torch.autograd.grad(true_loss, list(reference.parameters()))
    _reference_lars_step(reference, grads, cfg.train.batch_size)
    for (name, p), q in zip(method.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
