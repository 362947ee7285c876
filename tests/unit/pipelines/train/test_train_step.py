"""TrainStep without Ray: exact continuation from a checkpoint, accumulation, hooks, errors."""

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.config.layers import load_config, parse_set
from pipelines.train.checkpoint import capture_rng, load_state, restore_rng, save_state
from pipelines.train.model import build_method
from pipelines.train.step import NonFiniteLossError, TrainStep, place
from ssl_models.methods.base import SSLMethod
from tests.distributed_helpers import run_distributed

CPU = torch.device("cpu")


def config(*pairs: str):
    base = [
        "backbone.width=0.125",
        "method_args.proj_hidden_dim=16",
        "method_args.proj_dim=8",
        "views.groups.global.size=16",
        "train.batch_size=4",
        "optim.warmup_epochs=1",
    ]
    return load_config(overrides=parse_set([*base, *pairs]))


def batches(n: int, b: int = 4, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = (b, 2, 3, size, size)
    return [
        {"global": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)} for _ in range(n)
    ]


class Toy(SSLMethod):
    """A linear encoder on view 0; records the order of hook calls and what they saw."""

    def __init__(self, nan_at: int = -1) -> None:
        super().__init__()
        self.backbone = nn.Linear(3 * 4 * 4, 4)
        self.backbone.out_dim = 4
        self.events: list[str] = []
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch):
        self.events.append("forward")
        self.calls += 1
        z = self.backbone(batch["global"][:, 0].flatten(1))  # (B, 4)
        loss = (z - 1).pow(2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "keys": z.detach(), "z_mean": z.detach().mean()}

    def on_step_start(self, progress):
        self.events.append("start")
        return {"momentum": 0.5}

    def on_after_backward(self, progress):
        self.events.append(f"after_backward grad={self.backbone.weight.grad is not None}")
        self.weight_at_backward = self.backbone.weight.detach().clone()

    def on_step_end(self, outputs, progress):
        moved = not torch.equal(self.backbone.weight, self.weight_at_backward)
        self.events.append(f"end moved={moved}")
        self.seen_keys = outputs["keys"]


def toy_config(*pairs: str):
    return config("views.groups.global.size=4", "optim.name=sgd", "optim.momentum=0.0", *pairs)


def test_hooks_run_in_order_and_extras_are_logged():
    cfg = toy_config()
    toy = Toy()
    step = TrainStep(toy, cfg, CPU, total_steps=10, steps_per_epoch=5)
    result = step(batches(1, size=4)[0], 0)
    assert toy.events == ["start", "forward", "after_backward grad=True", "end moved=True"]
    assert result.metrics["momentum"] == 0.5 and "z_mean" in result.metrics
    assert result.metrics["lr"] == pytest.approx(0.3 * 4 / 256 * 1 / 5)  # warmup step 1 of 5


@pytest.mark.parametrize("per_parameter", [True, False])
def test_clip_grad_per_parameter_bounds_every_tensors_step(per_parameter):
    cfg = toy_config(
        "optim.weight_decay=0.0",
        "optim.clip_grad=0.001",
        f"optim.clip_grad_per_parameter={per_parameter}",
    )
    toy = Toy()
    before = [p.detach().clone() for p in toy.parameters()]
    lr = TrainStep(toy, cfg, CPU, 10, 5)(batches(1, size=4)[0], 3).metrics["lr"]
    moved = [
        float((p.detach() - b).norm()) / lr for p, b in zip(toy.parameters(), before, strict=True)
    ]
    if per_parameter:  # weight and bias each stepped by exactly the clipped norm
        assert moved == pytest.approx([0.001, 0.001], rel=1e-2)
    else:  # the global norm is clipped: together they step by it
        assert sum(m * m for m in moved) ** 0.5 == pytest.approx(0.001, rel=1e-2)


def test_gradient_accumulation_equals_one_big_batch():
    cfg1 = toy_config("views.augment_device=cpu")
    cfg2 = toy_config("views.augment_device=cpu", "train.accumulate_steps=2")
    batch = batches(1, size=4)[0]
    torch.manual_seed(0)
    one = Toy()
    torch.manual_seed(0)
    two = Toy()
    r1 = TrainStep(one, cfg1, CPU, 10, 5)(batch, 3)
    r2 = TrainStep(two, cfg2, CPU, 10, 5)(batch, 3)
    assert two.events.count("forward") == 2 and two.events.count("start") == 1
    assert float(r2.loss) == pytest.approx(float(r1.loss), rel=1e-6)
    for p1, p2 in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.allclose(p1, p2, atol=1e-7)
    # the hook sees every micro-batch's keys, in batch order
    assert two.seen_keys.shape == (4, 4)
    assert torch.allclose(two.seen_keys, one.seen_keys, atol=1e-6)


def test_batch_that_does_not_split_is_an_error():
    step = TrainStep(Toy(), toy_config("train.workers=1", "train.accumulate_steps=4"), CPU, 10, 5)
    with pytest.raises(ValueError, match="does not split into 4"):
        step(batches(1, b=6, size=4)[0], 0)


def test_non_finite_loss_names_the_step():
    step = TrainStep(Toy(nan_at=1), toy_config(), CPU, 10, 5)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 7"):
        step(batches(1, size=4)[0], 7)


def test_non_finite_second_micro_batch_leaves_the_weights_alone():
    toy = Toy(nan_at=2)
    before = toy.backbone.weight.detach().clone()
    step = TrainStep(toy, toy_config("train.accumulate_steps=2"), CPU, 10, 5)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        step(batches(1, size=4)[0], 3)
    assert toy.events == ["start", "forward", "forward"]  # no hook after the backward passes
    assert torch.equal(toy.backbone.weight, before)


def test_rng_capture_restores_every_generator():
    gen = torch.Generator().manual_seed(3)
    state = capture_rng(gen)
    import random

    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    restore_rng(state, gen)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def run_and_resume(tmp_path, cfg, method_factory, n_before: int, n_after: int):
    """Train n_before steps, checkpoint through a weights_only file, train n_after more; then a
    fresh model resumes from the file and trains the same n_after. Returns both continuations."""
    data = batches(n_before + n_after)
    torch.manual_seed(0)
    method = place(method_factory(cfg), cfg, CPU)
    step = TrainStep(method, cfg, CPU, total_steps=20, steps_per_epoch=4)
    for i in range(n_before):
        step(data[i], i)
    save_state(tmp_path, {**step.state_dict(), "step": n_before})
    straight = [float(step(data[i], i).loss) for i in range(n_before, n_before + n_after)]

    torch.manual_seed(123)  # a different init and global RNG: only the checkpoint can fix them
    fresh = place(method_factory(cfg), cfg, CPU)
    resumed = TrainStep(fresh, cfg, CPU, total_steps=20, steps_per_epoch=4)
    state = load_state(tmp_path)
    resumed.load_state_dict(state)
    again = [float(resumed(data[i], i).loss) for i in range(state["step"], n_before + n_after)]
    return straight, again, method, fresh


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    # LARS momentum, warmup + cosine, train-side photometric augmentation from the generator
    cfg = config("optim.weight_decay_end=0.01")
    straight, again, method, fresh = run_and_resume(tmp_path, cfg, build_method, 2, 2)
    assert again == straight  # bitwise: same weights, optimizer state and augmentation draws
    for (name, a), (_, b) in zip(
        method.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_online_probe_does_not_change_training():
    data, labels = batches(2), torch.tensor([0, 1, 0, 1])
    finals = []
    for probe in (False, True):
        cfg = config(f"eval.online_probe={str(probe).lower()}")
        torch.manual_seed(0)
        method = place(build_method(cfg), cfg, CPU)
        step = TrainStep(method, cfg, CPU, 10, 5, num_classes=2)
        results = [step(b, i, labels) for i, b in enumerate(data)]
        finals.append(method.state_dict())
        assert ("probe_top1" in results[-1].metrics) == probe
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def _ddp_resume(rank: int, world: int):
    """Under DDP: 2 steps, checkpoint (every rank's RNG gathered), 1 more; a fresh model resumes
    and repeats the last step. Returns both losses and the saved RNG generator states."""
    import tempfile

    from pipelines.train.checkpoint import gather_rng

    torch.set_num_threads(1)
    cfg = config("train.workers=2")
    data = batches(3, b=2, seed=10 + rank)  # each rank its own half of the global batch
    torch.manual_seed(0)
    step = TrainStep(place(build_method(cfg), cfg, CPU), cfg, CPU, 20, 4)
    for i in range(2):
        step(data[i], i)
    rngs = gather_rng(capture_rng(step.generator))
    state = {**step.state_dict(), "rng": rngs}
    with tempfile.TemporaryDirectory() as d:
        save_state(d, state)
        loaded = load_state(d)
    straight = float(step(data[2], 2).loss)
    torch.manual_seed(99)
    fresh = TrainStep(place(build_method(cfg), cfg, CPU), cfg, CPU, 20, 4)
    fresh.load_state_dict(loaded, loaded["rng"][rank])
    return straight, float(fresh(data[2], 2).loss), [r["generator"] for r in loaded["rng"]]


def test_two_worker_checkpoint_keeps_each_ranks_rng():
    (s0, a0, rng0), (s1, a1, rng1) = run_distributed(_ddp_resume, 2)
    assert s0 == a0 and s1 == a1
    assert len(rng0) == 2 and torch.equal(rng0[0], rng1[0]) and torch.equal(rng0[1], rng1[1])
    assert not torch.equal(rng0[0], rng0[1])  # each rank's augmentation stream is its own
