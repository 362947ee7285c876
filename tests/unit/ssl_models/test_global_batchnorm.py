"""Global BatchNorm on CPU workers: 2 gloo workers each holding part of a batch normalise, update
their running statistics and back-propagate exactly as one process with plain BatchNorm on the
whole batch; the training step converts every BatchNorm but the ones a method keeps per worker
(MoCo's key encoder); the recipes whose references synchronise BN turn it on."""

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipelines.config.layers import load_config, parse_set, recipe_names
from pipelines.train.model import build_method
from pipelines.train.step import TrainStep, place, sync_batchnorm
from ssl_models.global_bn import GlobalBatchNorm, convert_batchnorm
from tests.distributed_helpers import run_distributed
from tests.method_helpers import tiny_method

CPU = torch.device("cpu")

# (layer, input shape of the whole batch, rows of rank 0, steps): BatchNorm2d on a channels-last
# image batch split evenly; BatchNorm1d with a cumulative average (momentum None) on an uneven
# split; an affine-free BatchNorm1d (SimSiam's and MoCo v3's last layer) on (N, C, L) input
CASES = [
    (lambda: nn.BatchNorm2d(3, momentum=0.3), (6, 3, 4, 5), 3, 2),
    (lambda: nn.BatchNorm1d(5, momentum=None), (8, 5), 3, 3),
    (lambda: nn.BatchNorm1d(4, affine=False), (7, 4, 3), 5, 2),
]


def _case_data(case: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of one step and the gradient flowing into the layer's output."""
    _, shape, _, _ = CASES[case]
    g = torch.Generator().manual_seed(100 * case + step)
    x = torch.randn(shape, generator=g) * 3 + 2  # per-channel means away from 0, as activations
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(shape, generator=g)


def _layer(case: int) -> nn.Module:
    torch.manual_seed(case)
    bn = CASES[case][0]()
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    return bn


def _run(bn: nn.Module, case: int, rows: slice) -> dict:
    """Every step's output and input gradient for ``rows`` of the batch; the parameters'
    gradients summed over the steps; the final running statistics."""
    outputs, grads = [], []
    for step in range(CASES[case][3]):
        x, upstream = _case_data(case, step)
        x = x[rows].clone().requires_grad_(True)
        y = bn(x)
        (y * upstream[rows]).sum().backward()
        outputs.append(y.detach())
        grads.append(x.grad)
    params = {k: p.grad.clone() for k, p in bn.named_parameters()}
    return {"y": outputs, "dx": grads, "dparams": params, "buffers": dict(bn.named_buffers())}


def _global_bn_half(rank: int, world: int) -> list[dict]:
    torch.set_num_threads(1)
    results = []
    for case, (_, shape, split, _) in enumerate(CASES):
        holder = nn.Sequential(_layer(case))
        converted = convert_batchnorm(holder, GlobalBatchNorm)
        assert converted == ["0"] and isinstance(holder[0], GlobalBatchNorm)
        rows = slice(0, split) if rank == 0 else slice(split, shape[0])
        results.append(_run(holder.train(), case, rows))
    return results


def test_two_workers_normalise_and_backpropagate_as_one_process_on_the_whole_batch():
    per_rank = run_distributed(_global_bn_half, world=2)
    for case, (_, shape, split, steps) in enumerate(CASES):
        ref = _run(nn.Sequential(_layer(case)).train(), case, slice(None))
        parts = (slice(0, split), slice(split, shape[0]))
        for rank, rows in enumerate(parts):
            got = per_rank[rank][case]
            for s in range(steps):
                torch.testing.assert_close(got["y"][s], ref["y"][s][rows], msg=f"case {case} y")
                torch.testing.assert_close(got["dx"][s], ref["dx"][s][rows], msg=f"case {case} dx")
            # every worker ends with the running statistics of the whole batch, unbiased variance
            for name, buffer in ref["buffers"].items():
                torch.testing.assert_close(got["buffers"][name], buffer, msg=f"case {case} {name}")
        # the parameters' gradients of the workers add up (DDP then averages over workers)
        for name, grad in ref["dparams"].items():
            total = per_rank[0][case]["dparams"][name] + per_rank[1][case]["dparams"][name]
            torch.testing.assert_close(total, grad, msg=f"case {case} d{name}")


def test_one_process_and_eval_mode_are_plain_batchnorm():
    x, _ = _case_data(0, 0)
    plain, converted = _layer(0), nn.Sequential(_layer(0))
    convert_batchnorm(converted, GlobalBatchNorm)
    torch.testing.assert_close(converted(x), plain(x))  # training, no process group
    for a, b in zip(converted[0].buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(converted.eval()(x), plain.eval()(x))


def test_conversion_keeps_parameters_buffers_and_state_dict_keys():
    method = tiny_method("simclr_v2")
    before = {k: v.data_ptr() for k, v in method.state_dict().items()}
    params = [id(p) for p in method.parameters()]
    converted = convert_batchnorm(method, GlobalBatchNorm)
    assert converted
    assert all(isinstance(method.get_submodule(n), GlobalBatchNorm) for n in converted)
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in method.modules())
    assert {k: v.data_ptr() for k, v in method.state_dict().items()} == before
    assert [id(p) for p in method.parameters()] == params  # the optimizer's list is unchanged


def test_global_batchnorm_rejects_one_dimensional_input():
    bn = GlobalBatchNorm(3)
    with pytest.raises(ValueError, match=r"expects \(N, C, \.\.\.\) input, got \(3,\)"):
        bn(torch.zeros(3))


def test_moco_keeps_its_key_encoder_out_only_under_shuffle_bn():
    moco = tiny_method("moco_v2")
    assert moco.local_batchnorm_modules() == [moco.backbone_momentum, moco.projector_momentum]
    assert tiny_method("moco_v2", shuffle_bn=False).local_batchnorm_modules() == []
    assert tiny_method("simclr_v2").local_batchnorm_modules() == []


def _step_config(method: str, sync: bool):
    return load_config(
        method,
        overrides=parse_set(
            [
                "backbone.width=0.125",
                "views.groups.global.size=16",
                "train.batch_size=4",
                "train.workers=2",
                f"train.sync_batchnorm={str(sync).lower()}",
            ]
        ),
    )


def _bn_buffers(method: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in method.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def _train_step_two_workers(rank: int, world: int) -> dict:
    """One SimCLR step per worker on its own half of the batch, with and without
    ``train.sync_batchnorm``; and the layer types MoCo v2 ends with under it."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    batch = {"global": torch.randint(0, 256, (2, 2, 3, 16, 16), generator=g, dtype=torch.uint8)}
    out: dict = {}
    for sync in (False, True):
        cfg = _step_config("simclr", sync)
        torch.manual_seed(0)
        step = TrainStep(place(build_method(cfg), cfg, CPU), cfg, CPU, 4, 2)
        step(batch, 0)
        out[sync] = _bn_buffers(step.method)
        out[f"types {sync}"] = {type(m) for m in step.method.modules()}
    cfg = _step_config("moco_v2", True)
    moco = sync_batchnorm(build_method(cfg), cfg, CPU)
    out["moco"] = {
        part: {type(m).__name__ for m in getattr(moco, part).modules() if isinstance(m, _BatchNorm)}
        for part in ("backbone", "backbone_momentum")
    }
    return out


@pytest.fixture(scope="module")
def two_worker_steps() -> list[dict]:
    return run_distributed(_train_step_two_workers, world=2)


def test_sync_batchnorm_gives_cpu_workers_the_statistics_of_the_global_batch(two_worker_steps):
    r0, r1 = two_worker_steps
    assert GlobalBatchNorm in r0["types True"] and GlobalBatchNorm not in r0["types False"]
    # per-worker BatchNorm: each worker's running statistics are those of its own half
    assert any(not torch.equal(r0[False][k], r1[False][k]) for k in r0[False])
    for key, value in r0[True].items():
        torch.testing.assert_close(r1[True][key], value, msg=key)
    counts = [int(v) for k, v in r0[True].items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {1}  # SimCLR: one forward of both views per step


def test_sync_batchnorm_leaves_mocos_key_encoder_per_worker(two_worker_steps):
    for moco in (r["moco"] for r in two_worker_steps):
        assert moco == {"backbone": {"GlobalBatchNorm"}, "backbone_momentum": {"BatchNorm2d"}}


def test_sync_batchnorm_is_a_no_op_in_one_process():
    cfg = _step_config("simclr", True)
    method = build_method(cfg)
    assert sync_batchnorm(method, cfg, CPU) is method
    assert not any(isinstance(m, GlobalBatchNorm) for m in method.modules())


# the references that synchronise BatchNorm over the global batch (see each recipe's comment)
GLOBAL_BN = {
    "simclr",
    "simclr_v2",
    "byol",
    "moco_v3",
    "swav",
    "barlow_twins",
    "vicreg",
    "simsiam",
    "dino",
}


@pytest.mark.parametrize("method", recipe_names())
def test_recipes_synchronise_batchnorm_where_their_references_do(method):
    cfg = load_config(method, None, {"data": {"path": "x"}})
    assert cfg.train.sync_batchnorm == (method in GLOBAL_BN)
