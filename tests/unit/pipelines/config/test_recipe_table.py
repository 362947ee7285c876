"""Every recipe's headline values against the paper or official code it follows.

The values are read as ``sslpipe pretrain --method X --data ...`` resolves them (the laptop profile
applies only without a data path), so a recipe cannot drift from its reference without this table
changing with it. Each row names its source (paper section or table, official file and flag);
``deviation`` says where a recipe departs from that source on purpose, and why.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipelines.config.layers import load_config, recipe_names

# One view's photometric augmentation: (jitter p, (brightness, contrast, saturation, hue) or None
# when there is no colour jitter, grayscale p, blur p, solarize p)
Colour = tuple[float, tuple[float, float, float, float] | None, float, float, float]

S1 = (0.8, 0.8, 0.8, 0.2)  # SimCLR's colour strength s = 1 (0.8s, 0.8s, 0.8s, 0.2s)
BYOL = (0.4, 0.4, 0.2, 0.1)  # BYOL table 6, reused by MoCo v3, Barlow Twins, VICReg, DINO
MOCO = (0.4, 0.4, 0.4, 0.1)  # MoCo v2's --aug-plus ColorJitter, reused by SimSiam

NO_COLOUR: Colour = (0.0, None, 0.0, 0.0, 0.0)
# BYOL table 6: view 1 always blurred, never solarized; view 2 rarely blurred, solarized at 0.2
BYOL_PAIR: tuple[Colour, ...] = ((0.8, BYOL, 0.2, 1.0, 0.0), (0.8, BYOL, 0.2, 0.1, 0.2))
DINO_LOCAL: Colour = (0.8, BYOL, 0.2, 0.5, 0.0)  # DINO's DataAugmentationDINO local crops


@dataclass(frozen=True)
class Crops:
    """A view group: ``count`` crops of ``size`` pixels, RandomResizedCrop area ``scale``, and
    the photometric augmentation of each view (cycled, as ``ViewGroupConfig.photometric``)."""

    count: int
    size: int
    scale: tuple[float, float]
    colour: tuple[Colour, ...]


@dataclass(frozen=True)
class Paper:
    ref: str  # where the values come from
    optim: str
    lr: tuple[float, int]  # the reference's peak learning rate and the batch it is given for
    weight_decay: float
    warmup_epochs: float
    epochs: int
    batch: int
    crops: dict[str, Crops]
    args: dict[str, Any] = field(default_factory=dict)  # temperatures, EMA momentum, queue...
    zero_init_residual: bool | None = None  # ResNets: as the reference builds them
    deviation: str = ""  # a documented, deliberate departure from ``ref`` and its reason


TABLE: dict[str, Paper] = {
    # ---- context-based pretext tasks ----
    "rotnet": Paper(
        ref="gidariss/FeatureLearningRotNet config/ImageNet_RotNet_AlexNet.py (batch_size 192, "
        "LUT_lr 0.01 until epoch 15, weight_decay 5e-4, max_num_epochs 50, random_sized_crop); "
        "VISSL rotnet_8gpu_resnet.yaml for the ResNet-50 (RESNETS.ZERO_INIT_RESIDUAL default "
        "False)",
        optim="sgd",
        lr=(0.01, 192),
        weight_decay=5e-4,
        warmup_epochs=0,
        epochs=50,
        batch=192,
        crops={"global": Crops(4, 224, (0.08, 1.0), (NO_COLOUR,))},
        zero_init_residual=False,
        deviation="cosine decay where the reference steps ×0.1 at epochs 15, 30, 45 (the "
        "schedule is warmup + cosine only); plain momentum, not Nesterov; ResNet-50 (VISSL's "
        "model-zoo network) instead of AlexNet",
    ),
    "relative_loc": Paper(
        ref="mmselfsup relative-loc_resnet50_8xb64-steplr-70e_in1k.py (SGD lr 0.2 at 8×64, "
        "weight_decay 1e-4, LinearLR warmup over 5 epochs, max_epochs 70) with "
        "_base_/models/relative-loc.py (mmselfsup ResNet, zero_init_residual default False); "
        "Doersch et al. 2015 §3 for the 96-pixel patch pairs",
        optim="sgd",
        lr=(0.2, 512),
        weight_decay=1e-4,
        warmup_epochs=5,
        epochs=70,
        batch=512,
        crops={"patches": Crops(2, 96, (0.35, 0.75), (NO_COLOUR,))},
        zero_init_residual=False,
        deviation="cosine decay where mmselfsup steps ×0.1 at epochs 30 and 50; its neck and "
        "head take weight decay 5e-4, here 1e-4 like the rest (one decay for all groups)",
    ),
    "jigsaw": Paper(
        ref="MehdiNoroozi/JigsawPuzzleSolver solver_cfn_jps.prototxt (base_lr 0.01, "
        "weight_decay 0.0005, momentum 0.9, max_iter 350000 = 70 epochs of 256) and "
        "train_val_cfn_jps.prototxt (batch_size 256, 64-pixel tiles); VISSL "
        "jigsaw_8gpu_resnet.yaml for the ResNet-50 (ZERO_INIT_RESIDUAL default False)",
        optim="sgd",
        lr=(0.01, 256),
        weight_decay=5e-4,
        warmup_epochs=0,
        epochs=70,
        batch=256,
        crops={"tiles": Crops(9, 64, (0.58, 0.77), (NO_COLOUR,))},
        args={"num_permutations": 1000},  # the paper's best set (table 3)
        zero_init_residual=False,
        deviation="cosine decay where the solver steps ×0.1 every 100K iterations",
    ),
    # ---- contrastive with negatives ----
    "simclr": Paper(
        ref="SimCLR (arXiv:2002.05709) §2.3 default setting (LARS, 0.3 × batch/256, weight "
        "decay 1e-6, batch 4096, 100 epochs, 10 warmup epochs), table 5 (τ 0.1), appendix A "
        "(crop (0.08, 1), colour strength s = 1, blur p 0.5); google-research/simclr "
        "resnet.py batch_norm_relu(init_zero=True)",
        optim="lars",
        lr=(0.3, 256),
        weight_decay=1e-6,
        warmup_epochs=10,
        epochs=100,
        batch=4096,
        crops={"global": Crops(2, 224, (0.08, 1.0), ((0.8, S1, 0.2, 0.5, 0.0),))},
        args={"temperature": 0.1},
        zero_init_residual=True,
    ),
    "simclr_v2": Paper(
        ref="SimCLR v2 (arXiv:2006.10029) pretraining: LARS, lr 6.4 = 0.1 × sqrt(4096), weight "
        "decay 1e-4, 800 epochs, warmup over the first 5%, τ 0.1; v1's augmentation "
        "(run.py --color_jitter_strength 1.0); resnet.py init_zero",
        optim="lars",
        lr=(6.4, 4096),
        weight_decay=1e-4,
        warmup_epochs=40,
        epochs=800,
        batch=4096,
        crops={"global": Crops(2, 224, (0.08, 1.0), ((0.8, S1, 0.2, 0.5, 0.0),))},
        args={"temperature": 0.1},
        zero_init_residual=True,
        deviation="the lr scales linearly with batch where v2 takes 0.1 × sqrt(batch): equal "
        "at 4096 only (the optimiser has one scaling rule)",
    ),
    "moco_v1": Paper(
        ref="facebookresearch/moco main_moco.py defaults (--lr 0.03, -b 256, --wd 1e-4, "
        "--epochs 200, --moco-t 0.07, --moco-m 0.999, --moco-k 65536) and its v1 augmentation "
        "(RandomResizedCrop(0.2, 1), RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4) "
        "always, no blur); moco/builder.py base_encoder(num_classes=dim)",
        optim="sgd",
        lr=(0.03, 256),
        weight_decay=1e-4,
        warmup_epochs=0,
        epochs=200,
        batch=256,
        crops={"global": Crops(2, 224, (0.2, 1.0), ((1.0, (0.4, 0.4, 0.4, 0.4), 0.2, 0.0, 0.0),))},
        args={"temperature": 0.07, "momentum": 0.999, "queue_size": 65536},
        zero_init_residual=False,
        deviation="cosine decay (v2's --cos) where v1 steps ×0.1 at epochs 120 and 160 "
        "(--schedule): the schedule is warmup + cosine only",
    ),
    "moco_v2": Paper(
        ref="MoCo v2 (arXiv:2003.04297): main_moco.py --mlp --aug-plus --cos --moco-t 0.2 with "
        "its defaults (--lr 0.03, -b 256, --wd 1e-4, --epochs 200, --moco-m 0.999, --moco-k "
        "65536); --aug-plus: ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5",
        optim="sgd",
        lr=(0.03, 256),
        weight_decay=1e-4,
        warmup_epochs=0,
        epochs=200,
        batch=256,
        crops={"global": Crops(2, 224, (0.2, 1.0), ((0.8, MOCO, 0.2, 0.5, 0.0),))},
        args={"temperature": 0.2, "momentum": 0.999, "queue_size": 65536},
        zero_init_residual=False,
    ),
    "moco_v3": Paper(
        ref="facebookresearch/moco-v3 CONFIG.md ResNet-50 100 epochs (--moco-m-cos "
        "--crop-min=.2) with main_moco.py defaults (lars, --lr 0.6, --wd 1e-6, "
        "--warmup-epochs 10, -b 4096, --moco-t 1.0, --moco-m 0.99), augmentation1/2 (BYOL's "
        "pair), torchvision resnet50(zero_init_residual=True)",
        optim="lars",
        lr=(0.6, 256),
        weight_decay=1e-6,
        warmup_epochs=10,
        epochs=100,
        batch=4096,
        crops={"global": Crops(2, 224, (0.2, 1.0), BYOL_PAIR)},
        args={"temperature": 1.0, "momentum": 0.99, "momentum_final": 1.0},
        zero_init_residual=True,
    ),
    # ---- self-distillation ----
    "byol": Paper(
        ref="BYOL (arXiv:2006.07733) §3.3 (LARS, 0.2 × batch/256, weight decay 1.5e-6, 10 "
        "warmup epochs, 1000 epochs, batch 4096, τ 0.996 → 1) and table 6 (augmentations); "
        "byol/utils/networks.py: haiku BlockV1 batchnorm_2 scale_init zeros",
        optim="lars",
        lr=(0.2, 256),
        weight_decay=1.5e-6,
        warmup_epochs=10,
        epochs=1000,
        batch=4096,
        crops={"global": Crops(2, 224, (0.08, 1.0), BYOL_PAIR)},
        args={"momentum": 0.996, "momentum_final": 1.0},
        zero_init_residual=True,
    ),
    "simsiam": Paper(
        ref="facebookresearch/simsiam main_simsiam.py defaults (-b 512, --lr 0.05, --wd 1e-4, "
        "--epochs 100, cosine without warmup) with --fix-pred-lr; MoCo v2's augmentation; "
        "simsiam/builder.py base_encoder(zero_init_residual=True)",
        optim="sgd",
        lr=(0.05, 256),
        weight_decay=1e-4,
        warmup_epochs=0,
        epochs=100,
        batch=512,
        crops={"global": Crops(2, 224, (0.2, 1.0), ((0.8, MOCO, 0.2, 0.5, 0.0),))},
        args={"fix_predictor_lr": True},
        zero_init_residual=True,
    ),
    "dino": Paper(
        ref="facebookresearch/dino README ResNet-50 command (main_dino.py --arch resnet50 "
        "--optimizer sgd --lr 0.03 --weight_decay 1e-4 --global_crops_scale 0.14 1 "
        "--local_crops_scale 0.05 0.14) with main_dino.py defaults (8 GPUs × 64, --epochs 100, "
        "--warmup_epochs 10, --momentum_teacher 0.996, --local_crops_number 8, "
        "DataAugmentationDINO) and torchvision_models.resnet50() (no zero-init); the paper's "
        "teacher temperature 0.04 → 0.07 over 30 epochs",
        optim="sgd",
        lr=(0.03, 256),
        weight_decay=1e-4,
        warmup_epochs=10,
        epochs=100,
        batch=512,
        crops={
            "global": Crops(2, 224, (0.14, 1.0), BYOL_PAIR),
            "local": Crops(8, 96, (0.05, 0.14), (DINO_LOCAL,)),
        },
        args={
            "student_temp": 0.1,
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "warmup_teacher_temp_epochs": 30,
            "center_momentum": 0.9,
            "momentum": 0.996,
            "momentum_final": 1.0,
        },
        zero_init_residual=False,
        deviation="teacher temperature warmed up 0.04 → 0.07 over 30 epochs (the paper's "
        "setting) where main_dino.py defaults to a constant 0.04",
    ),
    # ---- clustering ----
    "swav": Paper(
        ref="facebookresearch/swav scripts/swav_800ep_pretrain.sh (--nmb_crops 2 6 --size_crops "
        "224 96 --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14 --temperature 0.1 "
        "--epsilon 0.05 --queue_length 0 --epochs 800 --batch_size 64 on 64 GPUs --base_lr 4.8 "
        "--final_lr 0.0048 --wd 0.000001 --warmup_epochs 10), src/multicropdataset.py "
        "get_color_distortion(s=1.0) and blur p 0.5, src/resnet50.py zero_init_residual=False",
        optim="lars",
        lr=(4.8, 4096),
        weight_decay=1e-6,
        warmup_epochs=10,
        epochs=800,
        batch=4096,
        crops={
            "global": Crops(2, 224, (0.14, 1.0), ((0.8, S1, 0.2, 0.5, 0.0),)),
            "local": Crops(6, 96, (0.05, 0.14), ((0.8, S1, 0.2, 0.5, 0.0),)),
        },
        args={"temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3, "queue_length": 0},
        zero_init_residual=False,
        deviation="warmup from 0 where the script starts at 0.3 (--start_warmup 0.3)",
    ),
    # ---- feature decorrelation ----
    "barlow_twins": Paper(
        ref="Barlow Twins (arXiv:2103.03230) §4 implementation details (LARS, 1000 epochs, "
        "batch 2048, lr 0.2 × batch/256 for the weights and 0.0048 for biases and BN, weight "
        "decay 1.5e-6, 10 warmup epochs, λ 0.0051, 32 GPUs); facebookresearch/barlowtwins "
        "main.py Transform (BYOL's pair), torchvision.models.resnet50(zero_init_residual=True) "
        "and its gradient, the true one / 32 (c all-reduced without autograd, DDP's average)",
        optim="lars",
        lr=(0.2, 256),
        weight_decay=1.5e-6,
        warmup_epochs=10,
        epochs=1000,
        batch=2048,
        crops={"global": Crops(2, 224, (0.08, 1.0), BYOL_PAIR)},
        args={"lambda_": 0.0051, "loss_scale": 1 / 32},
        zero_init_residual=True,
        deviation="the paper's weight decay 1.5e-6 where main.py defaults to 1e-6",
    ),
    "vicreg": Paper(
        ref="facebookresearch/vicreg README 1000-epoch command (--epochs 1000 --batch-size 2048 "
        "--base-lr 0.2) with main_vicreg.py defaults (--wd 1e-6, LARS, 10 warmup epochs, "
        "coefficients 25/25/1, resnet50(zero_init_residual=True)) and augmentations.py "
        "TrainTransform (BYOL's pair)",
        optim="lars",
        lr=(0.2, 256),
        weight_decay=1e-6,
        warmup_epochs=10,
        epochs=1000,
        batch=2048,
        crops={"global": Crops(2, 224, (0.08, 1.0), BYOL_PAIR)},
        args={"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0},
        zero_init_residual=True,
    ),
    # ---- masked image modeling ----
    "mae": Paper(
        ref="MAE (arXiv:2111.06377) appendix A.1 table 8 and PRETRAIN.md (--blr 1.5e-4 at "
        "4096, --weight_decay 0.05, β (0.9, 0.95), --warmup_epochs 40, --epochs 800, "
        "--mask_ratio 0.75; RandomResizedCrop(0.2, 1), no colour)",
        optim="adamw",
        lr=(1.5e-4, 256),
        weight_decay=0.05,
        warmup_epochs=40,
        epochs=800,
        batch=4096,
        crops={"global": Crops(1, 224, (0.2, 1.0), (NO_COLOUR,))},
        args={"mask_ratio": 0.75},
    ),
    "simmim": Paper(
        ref="microsoft/SimMIM configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep"
        ".yaml (BASE_LR 1e-4 per 512, WEIGHT_DECAY 0.05, WARMUP_EPOCHS 10, EPOCHS 800, batch "
        "2048, MASK_RATIO 0.6, MASK_PATCH_SIZE 32) and its RandomResizedCrop(0.67, 1)",
        optim="adamw",
        lr=(1e-4, 512),
        weight_decay=0.05,
        warmup_epochs=10,
        epochs=800,
        batch=2048,
        crops={"global": Crops(1, 224, (0.67, 1.0), (NO_COLOUR,))},
        args={"mask_ratio": 0.6, "mask_unit": 32},
        deviation="cosine decay where the config steps ×0.1 at epoch 700",
    ),
    "beit": Paper(
        ref="BEiT (arXiv:2106.08254) appendix pretraining hyperparameters (lr 1.5e-3 at batch "
        "2048, weight decay 0.05, 10 warmup epochs, 800 epochs, 75 of 196 patches masked) and "
        "run_beit_pretraining.py (ColorJitter(0.4, 0.4, 0.4) always, crop (0.08, 1))",
        optim="adamw",
        lr=(1.5e-3, 2048),
        weight_decay=0.05,
        warmup_epochs=10,
        epochs=800,
        batch=2048,
        crops={"global": Crops(1, 224, (0.08, 1.0), ((1.0, (0.4, 0.4, 0.4, 0.0), 0.0, 0.0, 0.0),))},
        args={"mask_ratio": 0.3827},
        deviation="a k-means tokenizer fitted on the training data (the DALL-E dVAE cannot be "
        "downloaded here)",
    ),
    "cae": Paper(
        ref="Atten4Vis/CAE scripts/cae_base_800e.sh (--batch_size 64 on 32 GPUs --lr 1.5e-3 "
        "--warmup_epochs 20 --epochs 800 --num_mask_patches 98 --color_jitter 0 "
        "--align_loss_weight 2) with tools/run_pretraining.py defaults (weight decay 0.05)",
        optim="adamw",
        lr=(1.5e-3, 2048),
        weight_decay=0.05,
        warmup_epochs=20,
        epochs=800,
        batch=2048,
        crops={"global": Crops(1, 224, (0.08, 1.0), (NO_COLOUR,))},
        args={"mask_ratio": 0.5, "align_weight": 2.0},
        deviation="a k-means tokenizer, as BEiT's row",
    ),
    # ---- self-distillation with masked tokens ----
    "ibot": Paper(
        ref="bytedance/ibot README ViT-S/16 command (16 GPUs × 64, --epochs 800 --teacher_temp "
        "0.07 --warmup_teacher_temp_epochs 30 --local_crops_number 10 --global_crops_scale "
        "0.25 1 --local_crops_scale 0.05 0.25 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2) with "
        "main_ibot.py defaults (AdamW, lr 5e-4, weight decay 0.04 → 0.4, 10 warmup epochs, "
        "momentum 0.996, DINO's augmentation)",
        optim="adamw",
        lr=(5e-4, 256),
        weight_decay=0.04,
        warmup_epochs=10,
        epochs=800,
        batch=1024,
        crops={
            "global": Crops(2, 224, (0.25, 1.0), BYOL_PAIR),
            "local": Crops(10, 96, (0.05, 0.25), (DINO_LOCAL,)),
        },
        args={
            "student_temp": 0.1,
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "teacher_patch_temp": 0.07,
            "warmup_teacher_temp_epochs": 30,
            "momentum": 0.996,
            "mask_ratio": (0.1, 0.5),
        },
    ),
    "dino_v2": Paper(
        ref="facebookresearch/dinov2 dinov2/configs/ssl_default_config.yaml (base_lr 0.004 for "
        "batch 1024, weight_decay 0.04 → 0.4, warmup_epochs 10, epochs 100, momentum_teacher "
        "0.992, teacher_temp 0.07 after 30 warmup epochs from 0.04, koleo_loss_weight 0.1, "
        "global crops (0.32, 1), 8 local crops (0.05, 0.32), DINO's augmentation)",
        optim="adamw",
        lr=(4e-3, 1024),
        weight_decay=0.04,
        warmup_epochs=10,
        epochs=100,
        batch=1024,
        crops={
            "global": Crops(2, 224, (0.32, 1.0), BYOL_PAIR),
            "local": Crops(8, 96, (0.05, 0.32), (DINO_LOCAL,)),
        },
        args={
            "student_temp": 0.1,
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "warmup_teacher_temp_epochs": 30,
            "momentum": 0.992,
            "koleo_weight": 0.1,
        },
        deviation="ViT-B/16 instead of ViT-L (none here); the lr scales linearly where the "
        "config takes sqrt_wrt_1024 (equal at 1024); no layer-wise lr decay",
    ),
}


def colours(group) -> tuple[Colour, ...]:
    """A view group's photometric settings in the table's form."""
    return tuple(
        (
            p.jitter_p,
            (p.brightness, p.contrast, p.saturation, p.hue) if p.jitter_p > 0 else None,
            p.grayscale_p,
            p.blur_p,
            p.solarize_p,
        )
        for p in group.photometric
    )


def same(a: Any, b: Any) -> bool:
    """Equal, floats to a relative 1e-9, except learning rates (compared by the caller)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def test_the_table_covers_every_recipe():
    assert sorted(TABLE) == recipe_names()


@pytest.mark.parametrize("method", sorted(TABLE))
def test_recipe_carries_its_references_values(method):
    paper = TABLE[method]
    cfg = load_config(method, None, {"data": {"path": "x"}})
    o, t, b = cfg.optim, cfg.train, cfg.backbone
    expected: dict[str, Any] = {
        "optim.name": paper.optim,
        "optim.weight_decay": paper.weight_decay,
        "optim.warmup_epochs": paper.warmup_epochs,
        "train.epochs": paper.epochs,
        "train.batch_size": paper.batch,
    }
    actual: dict[str, Any] = {
        "optim.name": o.name,
        "optim.weight_decay": o.weight_decay,
        "optim.warmup_epochs": o.warmup_epochs,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
    }
    for key, value in paper.args.items():
        expected[f"method_args.{key}"] = value
        actual[f"method_args.{key}"] = getattr(cfg.method_args, key)
    groups = cfg.views.groups
    assert sorted(groups) == sorted(paper.crops), f"{method}: view groups"
    for name, crops in paper.crops.items():
        expected[f"views.groups.{name}"] = (crops.count, crops.size, crops.scale, crops.colour)
        g = groups[name]
        actual[f"views.groups.{name}"] = (g.count, g.size, g.scale, colours(g))
    if paper.zero_init_residual is not None:
        expected["backbone.zero_init_residual"] = paper.zero_init_residual
        actual["backbone.zero_init_residual"] = b.zero_init_residual
    wrong = {k: (actual[k], v) for k, v in expected.items() if not same(actual[k], v)}
    assert not wrong, f"{method}: {{key: (recipe, reference)}} {wrong}; reference: {paper.ref}"
    # recipes give the rate per 256 images (× batch / 256 at run time), rounded to 3 figures
    lr, at = paper.lr
    assert o.base_lr == pytest.approx(lr * 256 / at, rel=5e-3), f"{method}: optim.base_lr"


@pytest.mark.parametrize("method", sorted(TABLE))
def test_resnet_rows_say_how_the_reference_initialises_the_blocks(method):
    # the ResNet builder zero-inits by default; a ResNet recipe must say what its reference does
    cfg = load_config(method, None, {"data": {"path": "x"}})
    assert (TABLE[method].zero_init_residual is None) == cfg.backbone.name.startswith("vit_")
