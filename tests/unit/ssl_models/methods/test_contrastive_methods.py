"""MoCo v1/v2/v3, SimCLR v2, BYOL, SimSiam and DINO as modules: forward/backward, learning on a
fixed batch, checkpoint round trip, momentum hooks, the state each one keeps."""

import dataclasses
import io
import itertools

import pytest
import torch
import torch.nn.functional as F

from ssl_models.methods.base import Progress
from ssl_models.methods.moco import MemoryQueue
from tests.distributed_helpers import run_distributed
from tests.method_helpers import MOMENTUM_PAIRS, TINY, tiny_batch, tiny_method, train

KEYS = list(TINY)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("key", KEYS)
def test_forward_backward(key):
    method = tiny_method(key)
    out = method(tiny_batch())
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    for _, copy in MOMENTUM_PAIRS.get(key, []):
        # the momentum network is trained by EMA only: it takes no gradient
        assert all(
            p.grad is None and not p.requires_grad for p in getattr(method, copy).parameters()
        )


@pytest.mark.parametrize("key", ["simclr_v2", "moco_v3", "byol", "simsiam"])
def test_loss_falls_on_a_fixed_batch(key):
    losses = train(tiny_method(key), tiny_batch(), steps=20)
    assert losses[-1] < 0.7 * losses[0] if losses[0] > 0 else losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("key", ["moco_v1", "moco_v2"])
def test_moco_learns_on_a_fixed_batch(key):
    # On a fixed batch the queue would fill with earlier keys of the same images, which then
    # act as negatives of their own queries: the loss must rise. So the queue is reset to its
    # initial random keys after every step here (enqueueing is tested on its own below).
    method = tiny_method(key, queue_size=32)
    initial_queue = method.queue.keys.clone()
    losses = train(
        method,
        tiny_batch(),
        steps=20,
        after_step=lambda: method.queue.keys.copy_(initial_queue),
    )
    assert losses[-1] < 0.8 * losses[0]


def test_dino_student_learns_the_teacher_targets():
    # teacher and centre held fixed (momenta 1): the student must fit the teacher's targets
    method = tiny_method("dino", momentum=1.0, momentum_final=1.0, center_momentum=1.0)
    losses = train(method, tiny_batch(), steps=20, lr=0.01)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("key", KEYS)
def test_state_dict_round_trip(key):
    method = tiny_method(key)
    batch = tiny_batch()
    train(method, batch, steps=2)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as checkpoints are read

    restored = tiny_method(key, seed=1)
    restored.load_state_dict(state)
    for name, value in method.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    # schedule-driven state (DINO's teacher temperature) is recomputed from the step, as the
    # training step does before every forward
    for m in (method, restored):
        m.on_step_start(Progress(2, 20, 5))
    with torch.no_grad():
        a, b = method(batch)["loss"], restored(batch)["loss"]
    torch.testing.assert_close(a, b)


def test_checkpoints_carry_the_queue_and_the_centre():
    assert {"queue.keys", "queue.ptr"} <= set(tiny_method("moco_v2").state_dict())
    dino = tiny_method("dino").state_dict()
    assert "center.center" in dino
    assert any(k.startswith("teacher_head.") for k in dino)


@pytest.mark.parametrize("key", list(MOMENTUM_PAIRS))
def test_declared_momentum_pairs_are_the_online_modules_and_their_copies(key):
    method = tiny_method(key)
    expected = [(getattr(method, a), getattr(method, b)) for a, b in MOMENTUM_PAIRS[key]]
    declared = method.momentum_pairs()
    assert len(declared) == len(expected)
    assert all(d[0] is e[0] and d[1] is e[1] for d, e in zip(declared, expected, strict=True))


@pytest.mark.parametrize("key", list(MOMENTUM_PAIRS))
def test_momentum_zero_makes_the_copy_the_online_network(key):
    extra = {} if key.startswith("moco_v") and key != "moco_v3" else {"momentum_final": 0.0}
    method = tiny_method(key, momentum=0.0, **extra)
    train(method, tiny_batch(), steps=1)
    for online, copy in MOMENTUM_PAIRS[key]:
        for p, q in zip(
            getattr(method, online).parameters(), getattr(method, copy).parameters(), strict=True
        ):
            torch.testing.assert_close(q, p, rtol=0, atol=0)


@pytest.mark.parametrize("key", list(MOMENTUM_PAIRS))
def test_momentum_one_leaves_the_copy_unchanged(key):
    extra = {} if key.startswith("moco_v") and key != "moco_v3" else {"momentum_final": 1.0}
    method = tiny_method(key, momentum=1.0, **extra)
    before = {copy: _params(getattr(method, copy)) for _, copy in MOMENTUM_PAIRS[key]}
    online_before = _params(method.backbone)
    train(method, tiny_batch(), steps=1)
    assert any(
        not torch.equal(a, b) for a, b in zip(online_before, _params(method.backbone), strict=True)
    )
    for copy, params in before.items():
        for a, b in zip(params, _params(getattr(method, copy)), strict=True):
            assert torch.equal(a, b), copy


def test_dino_centre_at_momentum_zero_and_one():
    batch = tiny_batch()
    method = tiny_method("dino", center_momentum=0.0)
    progress = Progress(0, 10, 5)
    out = method(batch)
    method.on_step_end(out, progress)
    mean = out["teacher_output"].mean(dim=0, keepdim=True)
    torch.testing.assert_close(method.center.center, mean)

    frozen = tiny_method("dino", center_momentum=1.0)
    frozen.on_step_end(frozen(batch), progress)
    assert torch.equal(frozen.center.center, torch.zeros_like(frozen.center.center))


def test_moco_enqueues_the_step_keys():
    method = tiny_method("moco_v2")
    out = method(tiny_batch(n=8))
    assert torch.allclose(out["keys"].norm(dim=1), torch.ones(8))
    method.on_step_end(out, Progress(0, 10, 5))
    torch.testing.assert_close(method.queue.keys[:8], out["keys"])
    assert int(method.queue.ptr) == 8


def test_memory_queue_wraps_and_keeps_the_newest():
    queue = MemoryQueue(5, 2)
    first, second = torch.arange(6.0).view(3, 2), 10 + torch.arange(6.0).view(3, 2)
    queue.push(first)
    queue.push(second)  # rows 3, 4, then wraps to row 0
    torch.testing.assert_close(queue.keys[3:], second[:2])
    torch.testing.assert_close(queue.keys[0], second[2])
    torch.testing.assert_close(queue.keys[1:3], first[1:])
    assert int(queue.ptr) == 1
    many = 100 + torch.arange(14.0).view(7, 2)  # more than the queue holds: the newest 5 stay
    queue.push(many)
    assert int(queue.ptr) == (1 + 7) % 5
    assert {tuple(r) for r in queue.keys.tolist()} == {tuple(r) for r in many[2:].tolist()}
    with pytest.raises(ValueError, match=r"keys must be \(N, 2\)"):
        queue.push(torch.zeros(3, 4))


def _moco_on_two_workers(rank: int, world: int):
    torch.set_num_threads(1)
    method = tiny_method("moco_v2")  # same seed: same weights and initial queue on every rank
    # shuffle-BN: keys computed on a shuffled global batch come back to their own worker
    x = tiny_batch(n=8)["global"][rank * 4 : rank * 4 + 4, 1]
    method.eval()  # running statistics: a key depends on its own image only
    shuffled = method.keys(x)
    plain = F.normalize(method._encode_keys(x), dim=1)
    method.train()  # batch statistics over the shuffled sub-batch: still one unit key per image
    trained = method.keys(x)
    # enqueueing: every worker's queue receives the keys of every worker
    keys = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(rank)), dim=1)
    method.on_step_end({"keys": keys}, Progress(0, 10, 5))
    return shuffled, plain, trained, keys, method.queue.keys[:6].clone(), int(method.queue.ptr)


def test_moco_on_two_workers_shuffles_bn_and_enqueues_everyones_keys():
    results = run_distributed(_moco_on_two_workers, world=2)
    everyone = torch.cat([r[3] for r in results])  # rank order
    for shuffled, plain, trained, _, queue_head, ptr in results:
        torch.testing.assert_close(shuffled, plain)
        assert trained.shape == (4, 16)
        torch.testing.assert_close(trained.norm(dim=1), torch.ones(4))
        torch.testing.assert_close(queue_head, everyone)
        assert ptr == 6


@pytest.mark.parametrize("key", ["simclr_v2", "moco_v3", "byol", "simsiam", "dino"])
def test_symmetric_methods_do_not_care_which_view_is_first(key):
    method = tiny_method(key)
    batch = tiny_batch()
    swapped = {**batch, "global": batch["global"].flip(1)}
    with torch.no_grad():
        a, b = method(batch)["loss"], method(swapped)["loss"]
    torch.testing.assert_close(a, b)


def test_dino_student_sees_every_crop_and_the_teacher_only_the_global_ones():
    method = tiny_method("dino")
    seen: dict[str, list[tuple[int, ...]]] = {"student": [], "teacher": []}
    method.backbone.register_forward_hook(lambda m, i, o: seen["student"].append(tuple(i[0].shape)))
    method.teacher_backbone.register_forward_hook(
        lambda m, i, o: seen["teacher"].append(tuple(i[0].shape))
    )
    method(tiny_batch(n=4, local=3))
    assert seen["student"] == [(8, 3, 16, 16), (12, 3, 8, 8)]  # 2 global, then 3 local crops
    assert seen["teacher"] == [(8, 3, 16, 16)]
    assert method.encoder is method.teacher_backbone  # DINO evaluates the teacher


def test_dino_last_layer_is_frozen_during_the_first_epoch():
    method = tiny_method("dino", freeze_last_layer_epochs=1)
    batch = tiny_batch()
    for step, frozen in ((4, True), (5, False)):  # 5 steps per epoch
        method.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        method.on_after_backward(Progress(step, 20, 5))
        last = [p.grad for p in method.head.last_layer.parameters() if p.requires_grad]
        assert all((g is None) == frozen for g in last)
        assert all(p.grad is not None for p in method.head.mlp.parameters())


def test_dino_last_layer_gets_no_update_in_its_frozen_epoch_and_does_after():
    method = tiny_method("dino", freeze_last_layer_epochs=1)
    snapshots = [_params(method.head.last_layer)]
    head_mlp = _params(method.head.mlp)
    # 2 steps per epoch: steps 0 and 1 frozen, step 2 the first to update the last layer
    train(
        method,
        tiny_batch(),
        steps=3,
        steps_per_epoch=2,
        after_step=lambda: snapshots.append(_params(method.head.last_layer)),
    )
    unchanged = [_equal(before, after) for before, after in itertools.pairwise(snapshots)]
    assert unchanged == [True, True, False]
    assert not _equal(head_mlp, _params(method.head.mlp))  # the rest of the head trains from 0


def test_dino_teacher_temperature_steps_once_per_epoch_as_the_reference():
    # main_dino.py: linspace(0.04, 0.07, 3)[epoch] for epochs 0-2, then 0.07
    method = tiny_method("dino", warmup_teacher_temp_epochs=3)
    for step, temp in ((0, 0.04), (9, 0.04), (10, 0.055), (19, 0.055), (20, 0.07), (95, 0.07)):
        assert method.on_step_start(Progress(step, 100, 10))["teacher_temp"] == pytest.approx(temp)
    assert method.teacher_temp == pytest.approx(0.07)


@pytest.mark.parametrize("key", ["moco_v3", "byol"])
def test_cosine_momentum_reaches_the_final_value(key):
    method = tiny_method(key)
    assert method.on_step_start(Progress(0, 10, 5))["momentum"] == pytest.approx(
        dataclasses.asdict(method.cfg)["momentum"]
    )
    assert method.on_step_start(Progress(10, 10, 5))["momentum"] == pytest.approx(1.0)


@pytest.mark.parametrize("key", KEYS)
def test_bad_views_are_named(key):
    method = tiny_method(key)
    with pytest.raises(ValueError, match=r"'global' views \(B, 2, 3, S, S\)"):
        method({"global": torch.randn(4, 3, 3, 16, 16)})
    with pytest.raises((KeyError, ValueError)):
        method({"local": torch.randn(4, 2, 3, 8, 8)})


def test_exported_encoders():
    for key in KEYS:
        method = tiny_method(key)
        expected = method.teacher_backbone if key == "dino" else method.backbone
        assert method.encoder is expected, key


def test_simclr_v2_output_batch_norm_learns_a_scale_and_no_shift():
    # google-research/simclr model_util.py projection_head: the last layer is
    # linear_layer(use_bias=False, use_bn=True), whose batch_norm_relu(center=False) keeps the
    # scale γ (tf.layers.batch_normalization's default scale=True) and drops the shift β
    method = tiny_method("simclr_v2")
    bn = method.projector[-1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.bias is None
    assert bn.weight.requires_grad and torch.equal(bn.weight, torch.ones(16))
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 16))
    z = method.projector(torch.randn(64, method.backbone.out_dim))  # the batch's statistics
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), bn.weight.detach(), rtol=1e-3, atol=0)
    method(tiny_batch())["loss"].backward()
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
