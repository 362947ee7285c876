"""Each method's recipe through the real pieces of the pipeline, without Ray: config layers ->
ViewMaker on JPEGs -> TrainStep; plus the paper values the recipes must carry."""

import math

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipelines.config.layers import load_config, parse_set
from pipelines.config.schema import OptimConfig
from pipelines.config.typed import ConfigError
from pipelines.data.stream.views import ViewMaker
from pipelines.train.model import backbone_from_config, build_method
from pipelines.train.optim import build_optimizer, set_lr
from pipelines.train.step import TrainStep, place
from ssl_models.registry import get_method
from ssl_models.tokenizer import KMeansTokenizer
from tests import images
from tests.method_helpers import tiny_method

KEYS = ["simclr_v2", "moco_v1", "moco_v2", "moco_v3", "byol", "simsiam", "dino"]


def _jpeg(seed: int) -> bytes:
    return images.jpeg(40, 36, seed)


@pytest.mark.parametrize("key", KEYS)
def test_embedded_recipe_trains_two_steps_through_the_step(key):
    cfg = load_config(key, overrides=parse_set(["backbone.width=0.125", "train.batch_size=4"]))
    rows = {
        "key": np.array([f"k{i}" for i in range(4)], dtype=object),
        "image": np.array([_jpeg(i) for i in range(4)], dtype=object),
        "label": np.arange(4, dtype=np.int32),
    }
    views = ViewMaker(cfg.views, seed=0)(rows)
    batch = {k: torch.from_numpy(v) for k, v in views.items() if k != "label"}
    device = torch.device("cpu")
    torch.manual_seed(0)
    method = place(build_method(cfg), cfg, device)
    step = TrainStep(method, cfg, device, total_steps=2, steps_per_epoch=1)
    results = [step(batch, s) for s in range(2)]
    assert all(math.isfinite(r.loss) for r in results)
    if key == "dino":
        assert batch["local"].shape == (4, 8, 3, 16, 16)  # multi-crop reaches the method


@pytest.mark.parametrize(
    "key, expected",
    [
        ("simclr_v2", {"proj_layers": 3, "proj_last_batch_norm": True, "temperature": 0.1}),
        ("moco_v1", {"temperature": 0.07, "proj_layers": 1, "queue_size": 65536}),
        ("moco_v2", {"temperature": 0.2, "proj_layers": 2, "momentum": 0.999}),
        ("moco_v3", {"temperature": 1.0, "momentum": 0.99, "momentum_final": 1.0}),
        ("byol", {"momentum": 0.996, "proj_hidden_dim": 4096, "proj_dim": 256}),
        ("simsiam", {"proj_layers": 3, "pred_hidden_dim": 512, "fix_predictor_lr": True}),
        ("dino", {"out_dim": 65536, "student_temp": 0.1, "teacher_temp": 0.07}),
    ],
)
def test_papers_recipe_applies_with_user_data(key, expected):
    cfg = load_config(key, overrides={"data": {"path": "/shards"}})
    assert cfg.backbone.name == "resnet50" and cfg.views.groups["global"].size == 224
    for field, value in expected.items():
        assert getattr(cfg.method_args, field) == value, field


def test_asymmetric_and_multi_crop_view_recipes():
    byol = load_config("byol", overrides={"data": {"path": "/shards"}}).views.groups["global"]
    assert [(p.blur_p, p.solarize_p) for p in byol.photometric] == [(1.0, 0.0), (0.1, 0.2)]
    dino = load_config("dino", overrides={"data": {"path": "/shards"}}).views.groups
    assert (dino["local"].count, dino["local"].size) == (8, 96)
    assert dino["global"].scale[0] == dino["local"].scale[1]  # the crops split the scale range
    moco_v2 = load_config("moco_v2", overrides={"data": {"path": "/shards"}}).views
    assert moco_v2.groups["global"].photometric[0].blur_p == 0.5  # v2's addition over v1
    assert load_config("moco_v1").views.groups["global"].photometric[0].blur_p == 0.0


@pytest.mark.parametrize("key, zero", [("moco_v2", False), ("simsiam", True)])
def test_recipes_zero_init_residual_reaches_the_resnet(key, zero):
    # moco/builder.py builds torchvision's ResNet-50 as is; simsiam/builder.py passes
    # zero_init_residual=True: the last BatchNorm of every block starts at scale 0 (identity)
    # the laptop profile zero-inits for every method, as its benchmark figures were measured
    for sets in (["data.path=/shards"], []):  # the paper's ResNet-50, the laptop's ResNet-18
        cfg = load_config(key, overrides=parse_set([*sets, "backbone.width=0.125"]))
        zero = zero if sets else True
        assert cfg.backbone.zero_init_residual is zero
        modules = backbone_from_config(cfg).modules()
        blocks = [m for m in modules if isinstance(m, (BasicBlock, Bottleneck))]
        last = [b.bn3 if isinstance(b, Bottleneck) else b.bn2 for b in blocks]
        assert len(last) == (16 if sets else 8)  # ResNet-50: 3+4+6+3 blocks; ResNet-18: 2×4
        assert all(bool((bn.weight == 0).all()) is zero for bn in last)
        assert all(bool((b.bn1.weight == 1).all()) for b in blocks)  # only the last one


def test_simsiam_predictor_keeps_the_peak_lr():
    method = tiny_method("simsiam")
    opt = build_optimizer(method, OptimConfig(name="sgd", base_lr=0.05), global_batch=512)
    fixed = [g for g in opt.param_groups if g["fixed_lr"]]
    predictor = {id(p) for p in method.predictor.parameters()}
    assert {id(p) for g in fixed for p in g["params"]} == predictor
    set_lr(opt, 0.001)  # the schedule moves everything else
    assert all(g["lr"] == pytest.approx(0.1) for g in fixed)  # 0.05 × 512 / 256
    assert all(g["lr"] == 0.001 for g in opt.param_groups if not g["fixed_lr"])

    plain = tiny_method("simsiam", fix_predictor_lr=False)
    opt = build_optimizer(plain, OptimConfig(name="lars"), global_batch=256)
    assert not any(g["fixed_lr"] for g in opt.param_groups)


@pytest.mark.parametrize(
    "key, layer_scale, init, pos_embed",
    [
        ("simmim", 0.1, "simmim", "relative"),
        ("beit", 0.1, "beit", "relative"),
        ("mae", 0.0, "xavier", "sincos"),
    ],
)
def test_mim_recipes_carry_their_references_vit(key, layer_scale, init, pos_embed):
    # SimMIM's config.py: MODEL.VIT.INIT_VALUES 0.1; SimMIM and BEiT initialise N(0, 0.02²) with
    # fix_init_weight, MAE Xavier-uniform; SimMIM's ViT config (USE_APE False, USE_SHARED_RPB
    # True) and BEiT's pretraining defaults (shared_rel_pos_bias, no abs_pos_emb) take the
    # shared relative position bias, MAE the fixed sin-cos table; the laptop profile keeps all
    for overrides in ({"data": {"path": "/shards"}}, {}):
        vit = load_config(key, overrides=overrides).backbone.vit
        assert (vit.layer_scale, vit.init, vit.pos_embed) == (layer_scale, init, pos_embed)


@pytest.mark.parametrize("key, layer_scale", [("ibot", 0.0), ("dino_v2", 1e-5)])
def test_distillation_recipes_carry_their_references_vit(key, layer_scale):
    # main_ibot.py's and dinov2's ViTs: learned positions, linear layers trunc-normal std 0.02,
    # mask token zeros (init "dino"); DINOv2's layerscale 1e-5. The laptop profile keeps the
    # plain init BENCHMARKS.md measured
    vit = load_config(key, overrides={"data": {"path": "/shards"}}).backbone.vit
    assert (vit.layer_scale, vit.init, vit.pos_embed) == (layer_scale, "dino", "learned")
    assert load_config(key).backbone.vit.init == "xavier"


TOKENS = ("beit", "cae")  # methods that predict the tokens of a tokenizer


@pytest.mark.parametrize(
    "key, pos_embed, undecayed",
    [
        # SimMIM's no_weight_decay() {pos_embed, cls_token} and no_weight_decay_keywords()
        # {relative_position_bias_table}; BEiT's and CAE's no_weight_decay() {pos_embed,
        # cls_token}; MAE's and iBOT's optimizers skip only biases and norms
        ("simmim", "relative", {"cls_token", "rel_pos_bias.table"}),
        ("simmim", "learned", {"cls_token", "pos_embed"}),
        ("beit", "relative", {"cls_token"}),
        ("beit", "learned", {"cls_token", "pos_embed"}),
        ("cae", "sincos", {"cls_token"}),
        ("mae", "sincos", set()),
        ("ibot", "learned", set()),
    ],
)
def test_vit_recipes_keep_their_references_tokens_out_of_weight_decay(key, pos_embed, undecayed):
    sets = ["backbone.name=vit_tiny", "backbone.vit.depth=1", f"backbone.vit.pos_embed={pos_embed}"]
    cfg = load_config(key, overrides=parse_set(sets))
    torch.manual_seed(0)
    backbone = backbone_from_config(cfg)
    extra = {"tokenizer": KMeansTokenizer(16, backbone.patch_size)} if key in TOKENS else {}
    method = get_method(key).cls(backbone, cfg.method_args, **extra)
    opt = build_optimizer(method, cfg.optim, global_batch=256)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    backbone = dict(method.backbone.named_parameters())
    for name in ("cls_token", "pos_embed", "rel_pos_bias.table", "mask_token"):
        if name in backbone:
            expected = 0.0 if name in undecayed else cfg.optim.weight_decay
            assert decay[id(backbone[name])] == expected, name
    assert cfg.optim.weight_decay > 0
    assert decay[id(method.backbone.blocks[0].attn.qkv.weight)] == cfg.optim.weight_decay


def test_dino_laptop_profile_takes_the_released_resnet50_head_and_optimizer():
    # the paper's recipe on user data; on the laptop profile (a ResNet) the released ResNet-50
    # checkpoint's BatchNorm head and LARS (BENCHMARKS.md: dino.yaml's head collapses there)
    paper = load_config("dino", overrides={"data": {"path": "/shards"}})
    assert not paper.method_args.use_bn_in_head
    assert (paper.optim.name, paper.optim.clip_grad) == ("sgd", 3.0)
    laptop = load_config("dino")
    assert laptop.method_args.use_bn_in_head
    assert (laptop.optim.name, laptop.optim.base_lr, laptop.optim.weight_decay) == (
        "lars",
        0.3,
        1.0e-6,
    )
    assert laptop.optim.clip_grad == 0.0


def test_laptop_profile_adds_koleo_to_dino_and_ibot_but_not_to_their_recipes():
    # DINOv2's KoLeo keeps the features of a batch apart once the head goes uniform at this size
    # (BENCHMARKS.md, "What we learned"); on SwAV it measured no gain, and SwAV has no such option
    for key in ("dino", "ibot"):
        paper = load_config(key, overrides={"data": {"path": "/shards"}})
        assert paper.method_args.koleo_weight == 0.0, key
        assert load_config(key).method_args.koleo_weight == 0.1, key
    with pytest.raises(ConfigError, match=r"unknown config key 'method_args.koleo_weight'"):
        load_config("swav", overrides={"method_args": {"koleo_weight": 0.1}})
    assert load_config("dino_v2").method_args.koleo_weight == 0.1  # its recipe's own
