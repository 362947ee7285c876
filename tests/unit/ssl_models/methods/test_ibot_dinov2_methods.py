"""iBOT and DINOv2 on a 2-block ViT over 16-pixel global crops (16 patches of 4 px) and 8-pixel
local crops: gradients, learning on a fixed batch, checkpoints, the teacher's momentum, iBOT's
centres (also over 2 workers), masking and the loss terms."""

import dataclasses
import io

import pytest
import torch

from ssl_models.backbones import build_backbone
from ssl_models.methods.base import Progress
from ssl_models.registry import METHODS
from tests.distributed_helpers import run_distributed

HEADS = dict(out_dim=64, patch_out_dim=64, hidden_dim=32, bottleneck_dim=16)
VARIANTS = {  # id -> (key, config overrides)
    "ibot": ("ibot", {}),
    "ibot_separate": ("ibot", dict(shared_head=False, patch_out_dim=32)),
    "ibot_koleo": ("ibot", dict(koleo_weight=0.1)),
    "dino_v2": ("dino_v2", dict(patch_out_dim=32)),
    "dino_v2_shared": ("dino_v2", dict(separate_head=False)),
}
PAIRS = {
    "ibot": [("backbone", "teacher_backbone"), ("head", "teacher_head")],
    "ibot_separate": [
        ("backbone", "teacher_backbone"),
        ("head", "teacher_head"),
        ("patch_last_layer", "teacher_patch_last_layer"),
    ],
    "ibot_koleo": [("backbone", "teacher_backbone"), ("head", "teacher_head")],
    "dino_v2": [
        ("backbone", "teacher_backbone"),
        ("head", "teacher_head"),
        ("patch_head", "teacher_patch_head"),
    ],
    "dino_v2_shared": [("backbone", "teacher_backbone"), ("head", "teacher_head")],
}


def build(
    variant: str, seed: int = 0, pos_embed: str = "sincos", drop_path: float = 0.0, **overrides
):
    key, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    entry = METHODS[key]
    backbone = build_backbone(
        "vit_tiny",
        image_size=16,
        patch_size=4,
        dim=16,
        depth=2,
        heads=2,
        pos_embed=pos_embed,
        drop_path=drop_path,
    )
    cfg = dataclasses.replace(entry.config(), **{**HEADS, **extra, **overrides})
    return entry.cls(backbone, cfg)


def batch(n: int = 4, seed: int = 0, local: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 3, 16, 16, generator=g)
    out = {"global": images + 0.3 * torch.randn(n, 2, 3, 16, 16, generator=g)}
    if local:
        small = torch.nn.functional.avg_pool2d(images[:, 0], 2).unsqueeze(1)
        out["local"] = small + 0.3 * torch.randn(n, local, 3, 8, 8, generator=g)
    return out


def step(method, x, progress: Progress, opt=None) -> dict[str, torch.Tensor]:
    method.on_step_start(progress)
    out = method(x)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    method.on_after_backward(progress)
    if opt is not None:
        opt.step()
    method.on_step_end(out, progress)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_reaches_every_trainable_parameter(variant):
    method = build(variant)
    method.on_step_start(Progress(0, 10, 5))
    out = method(batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing  # DDP (find_unused_parameters=False) fails on them
    for _, copy in PAIRS[variant]:  # the teacher learns by EMA only
        assert all(
            not p.requires_grad and p.grad is None for p in getattr(method, copy).parameters()
        )
    assert method.encoder is method.teacher_backbone  # both papers evaluate the teacher


@pytest.mark.parametrize("variant", ["ibot", "dino_v2"])
def test_only_the_student_has_stochastic_depth(variant):
    # main_ibot.py builds the teacher without --drop_path; DINOv2's build_model gives
    # drop_path_rate to the student only (and SSLMetaArch.train keeps the teacher in eval)
    method = build(variant, drop_path=0.5)
    method.train()
    crops = batch(n=8)["global"][:, 0]
    with torch.no_grad():
        teacher = [method.teacher_backbone.forward_tokens(crops) for _ in range(2)]
        student = [method.backbone.forward_tokens(crops) for _ in range(2)]
    torch.testing.assert_close(teacher[0], teacher[1], rtol=0, atol=0)
    assert not torch.equal(student[0], student[1])
    assert method.backbone.blocks[-1].drop_path == 0.5


@pytest.mark.parametrize("variant", ["ibot", "dino_v2"])
def test_relative_position_bias_serves_the_smaller_local_crops(variant):
    # the 8-pixel local crops have a 2x2 grid: their bias is read from the 4x4 grid's table
    method = build(variant, pos_embed="relative")
    method.on_step_start(Progress(0, 10, 5))
    method(batch())["loss"].backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert method.backbone.rel_pos_bias.table.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_falls_on_a_fixed_batch(variant):
    # teacher fixed (momentum 1), the same masks every step: the student must fit the targets
    extra = {"center_momentum": 1.0, "center_momentum_patch": 1.0} if "ibot" in variant else {}
    method = build(variant, momentum=1.0, momentum_final=1.0, freeze_last_layer_epochs=0, **extra)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    x = batch()
    losses = [step(method, x, Progress(0, 20, 5), opt)["loss"].item() for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip(variant):
    method = build(variant)
    x = batch()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    for s in range(2):
        step(method, x, Progress(s, 20, 5), opt)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build(variant, seed=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.seed = method.seed  # masks come from torch's seed at construction, as in training
    for m in (method, restored):
        m.on_step_start(Progress(2, 20, 5))
    with torch.no_grad():
        torch.testing.assert_close(method(x)["loss"], restored(x)["loss"])
    if variant.startswith("ibot"):
        assert {"center.center", "patch_center.center"} <= set(method.state_dict())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("m", [0.0, 1.0])
def test_teacher_momentum_zero_copies_and_one_freezes(variant, m):
    method = build(variant, momentum=m, momentum_final=m, freeze_last_layer_epochs=0)
    declared = [(id(a), id(b)) for a, b in method.momentum_pairs()]
    assert declared == [(id(getattr(method, a)), id(getattr(method, b))) for a, b in PAIRS[variant]]
    before = {c: [p.clone() for p in getattr(method, c).parameters()] for _, c in PAIRS[variant]}
    online_before = [p.clone() for p in method.backbone.parameters()]
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    step(method, batch(), Progress(0, 10, 5), opt)
    for online, copy in PAIRS[variant]:
        pairs = zip(
            getattr(method, online).parameters(), getattr(method, copy).parameters(), strict=True
        )
        if m == 0.0:
            assert all(torch.equal(p, q) for p, q in pairs), copy
        else:
            after = getattr(method, copy).parameters()
            assert all(torch.equal(a, b) for a, b in zip(before[copy], after, strict=True)), copy
    # the student did move, so m = 1 is a real test
    online_after = method.backbone.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(online_before, online_after, strict=True))


def test_ibot_centres_at_momentum_zero_and_one():
    method = build("ibot", center_momentum=0.0, center_momentum_patch=0.0)
    out = method(batch())
    method.on_step_end(out, Progress(0, 10, 5))
    torch.testing.assert_close(method.center.center, out["teacher_output"].mean(0, keepdim=True))
    patch_mean = out["teacher_patch_output"].mean(1).mean(0, keepdim=True)  # patches, images
    torch.testing.assert_close(method.patch_center.center, patch_mean)
    frozen = build("ibot", center_momentum=1.0, center_momentum_patch=1.0)
    frozen.on_step_end(frozen(batch()), Progress(0, 10, 5))
    assert not frozen.center.center.any() and not frozen.patch_center.center.any()


def _ibot_centres(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    method = build("ibot", center_momentum=0.5, center_momentum_patch=0.5)
    x = {k: v.chunk(world)[rank] for k, v in batch(n=4).items()}
    method.on_step_end(method(x), Progress(0, 10, 5))
    return method.center.center, method.patch_center.center


def test_ibot_centres_over_two_workers_equal_one_process():
    # the teacher sees unmasked crops, so the centres do not depend on the per-rank masks
    results = run_distributed(_ibot_centres, world=2)
    one = build("ibot", center_momentum=0.5, center_momentum_patch=0.5)
    one.on_step_end(one(batch(n=4)), Progress(0, 10, 5))
    for cls_c, patch_c in results:
        torch.testing.assert_close(cls_c, one.center.center)
        torch.testing.assert_close(patch_c, one.patch_center.center)


def test_ibot_without_masks_has_no_patch_loss_and_masks_per_image():
    method = build("ibot", mask_probability=0.0)
    out = method(batch())
    assert out["patch_loss"].item() == 0.0 and out["masked_fraction"].item() == 0.0
    method = build("ibot", mask_probability=1.0)
    method.on_step_start(Progress(3, 10, 5))
    masks = method.masks(torch.zeros(64, 3, 16, 16))
    per_image = masks.sum(1) / 16
    assert (per_image > 0).all() and (per_image <= 0.5).all()


def test_ibot_student_never_sees_its_masked_patches():
    method = build("ibot", mask_probability=1.0)
    method.on_step_start(Progress(1, 10, 5))
    masks = method.masks(torch.zeros(8, 3, 16, 16))  # the masks forward will draw
    method.on_step_start(Progress(1, 10, 5))
    x = batch(n=4, local=0)
    views = x["global"].requires_grad_(True)
    method({"global": views})["loss"].backward()
    grad = views.grad.transpose(0, 1).flatten(0, 1).abs().sum(1)  # (2B, 16, 16), view-major
    per_patch = grad.reshape(8, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(8, 16, 16).sum(-1)
    assert (per_patch[masks] == 0).all() and (per_patch[~masks] > 0).all()


def test_dino_v2_masks_exactly_half_the_crops_and_sums_its_terms():
    method = build("dino_v2", koleo_weight=0.1, ibot_weight=0.5)
    method.on_step_start(Progress(0, 10, 5))
    masks = method.masks(torch.zeros(8, 3, 16, 16))
    assert int(masks.any(1).sum()) == 4
    method.on_step_start(Progress(0, 10, 5))
    out = method(batch())
    expected = out["dino_loss"] + 0.5 * out["ibot_loss"] + 0.1 * out["koleo_loss"]
    torch.testing.assert_close(out["loss"].detach(), expected)


def test_teacher_temperatures_ibot_per_epoch_dino_v2_per_step():
    # iBOT's reference indexes linspace(0.04, 0.07, 2) by the epoch; DINOv2's schedule is
    # per iteration, linear over the warm-up
    ibot = build("ibot", warmup_teacher_temp_epochs=2)
    v2 = build("dino_v2", warmup_teacher_temp_epochs=2)
    for s, ibot_temp, v2_temp in ((0, 0.04, 0.04), (5, 0.04, 0.0475), (10, 0.07, 0.055)):
        assert ibot.on_step_start(Progress(s, 100, 10))["teacher_temp"] == pytest.approx(ibot_temp)
        assert ibot.teacher_patch_temp == pytest.approx(ibot_temp)
        assert v2.on_step_start(Progress(s, 100, 10))["teacher_temp"] == pytest.approx(v2_temp)


@pytest.mark.parametrize("variant", ["ibot", "ibot_separate", "dino_v2"])
def test_last_layers_are_frozen_during_the_first_epoch(variant):
    method = build(variant)
    second = method.patch_head.last_layer if variant == "dino_v2" else method.patch_last_layer
    heads = [method.head.last_layer] + ([second] if second is not None else [])
    for s, frozen in ((4, True), (5, False)):  # 5 steps per epoch
        method.zero_grad(set_to_none=True)
        method.on_step_start(Progress(s, 20, 5))
        method(batch())["loss"].backward()
        method.on_after_backward(Progress(s, 20, 5))
        grads = [p.grad for layer in heads for p in layer.parameters() if p.requires_grad]
        assert grads and all((g is None) == frozen for g in grads)
        assert all(p.grad is not None for p in method.head.mlp.parameters())


@pytest.mark.parametrize("key", ["ibot", "dino_v2"])
def test_needs_a_vit_and_two_global_views(key):
    entry = METHODS[key]
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        entry.cls(build_backbone("resnet18", width=0.125), entry.config())
    method = build(key)
    with pytest.raises(ValueError, match=r"'global' views \(B, 2, 3, S, S\)"):
        method({"global": torch.randn(2, 1, 3, 16, 16)})


def test_ibot_shared_head_needs_one_output_size():
    with pytest.raises(ValueError, match="patch_out_dim == out_dim"):
        build("ibot", patch_out_dim=32)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("ibot", {"out_dim": 8192, "shared_head": True, "norm_last_layer": False}),
        ("dino_v2", {"out_dim": 65536, "separate_head": True, "koleo_weight": 0.1}),
    ],
)
def test_papers_recipe_and_the_embedded_profile(key, expected):
    from pipelines.config.layers import load_config

    paper = load_config(key, overrides={"data": {"path": "/shards"}})
    assert {k: getattr(paper.method_args, k) for k in expected} == expected
    assert paper.backbone.vit.patch_size == 16 and paper.optim.name == "adamw"
    assert paper.views.groups["global"].scale[0] == paper.views.groups["local"].scale[1]
    laptop = load_config(key)
    assert laptop.backbone.name == "vit_tiny" and laptop.backbone.vit.patch_size == 4
    assert (laptop.views.groups["local"].count, laptop.views.groups["local"].size) == (4, 16)
    assert laptop.method_args.out_dim == 1024
