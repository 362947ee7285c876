"""The lightly side of the peer comparison: what a lightly user writes for the configuration an
sslpipe run resolved (``sslpipe pretrain ... --print-config``), trained in a plain PyTorch loop
on a torchvision ``ImageFolder`` and scored by sslpipe's own evaluator.

    python -m benchmarks.peer_lightly --config simclr.yaml --train-folder DIR --seed 0 \\
        --epochs 8 --started-at "$(date +%s.%N)" --out result.json

Methods: simclr, moco_v2, byol, simsiam, barlow_twins, vicreg, swav, dino, mae. Everything the
optimisation uses comes from lightly 1.6.0: losses (``lightly.loss``), heads and the memory bank
(``lightly.models.modules``), ``update_momentum`` / ``deactivate_requires_grad`` and the MAE
token utilities (``lightly.models.utils``), ``LARS``, ``cosine_schedule`` and
``cosine_warmup_schedule``, and the views (``lightly.transforms``). The backbone is sslpipe's
module (``backbone_from_config`` right after ``torch.manual_seed(seed)``, as ``build_method``
does), so both sides start from the same weights for the same seed; MAE drives sslpipe's ViT
(``forward_tokens(keep=...)``) with lightly's masking utilities and ``MAEDecoder``.

Mirrored from sslpipe on purpose: the lr is ``base_lr × batch / 256`` with a per-step linear
warmup then a cosine to ``final_lr_ratio`` (lightly's ``cosine_warmup_schedule`` given
``total_steps + 1``: it reaches its end value at ``max_steps − 1``, sslpipe's at
``total_steps``), the same for the momentum's cosine (``cosine_schedule``); biases and norm
parameters out of weight decay and LARS adaptation when ``optim.exclude_bias_and_norm``; the
EMA update after the optimizer step; SimSiam's predictor at the fixed peak lr; SimCLR's loss
doubled (sslpipe's NT-Xent is ``loss_a + loss_b``, lightly's their mean) and BYOL's written as
``Σ (2 − 2 cos)`` over the two directions (lightly's examples halve ``−cos``), so gradients
match in scale; batching of views through the networks as sslpipe's methods do (SimCLR, SwAV
and DINO pass views of one resolution together, the others one view at a time).

Differences that remain (also written to the result's ``notes``):

- Distribution: sslpipe runs ``train.workers`` DDP processes, each with its share of the batch,
  so BatchNorm statistics are per worker (128 rows at batch 256 on 2 workers); here one process
  normalises over the whole batch. MoCo's shuffle-BN across workers has no one-process
  counterpart (within one process it changes no statistic). Threads: torch's default here,
  ``train.torch_threads`` per worker there; no channels-last layout here.
- Data: ImageFolder JPEG decoding with PIL transforms in DataLoader workers, against sslpipe's
  Ray Data crops plus batched torch photometric augmentation on the training device. The order
  of images and every random draw differ.
- Blur: lightly's ``GaussianBlur`` is PIL's ``GaussianBlur(radius=sigma)``, whose support grows
  with sigma; sslpipe's kernel is ``blur_kernel_fraction`` of the view side (3 taps at 32 and
  16 pixels), so at the same sigma range lightly blurs the small views much more strongly.
- Colour ops run on 8-bit PIL images (rounded after each op) rather than floats; solarization
  thresholds at 128/255 (``solarize_threshold`` 0.5 is the only value lightly's transforms take).
- DINO's and MAE's transforms resize crops bicubically (sslpipe: bilinear). DINOTransform builds
  its second global view without ``cj_strength`` (the class default 0.5 applies), so jitter is
  passed as strength 0.5 times doubled values, which gives every view the configured strengths.
- VICReg uses ``BYOLTransform``: sslpipe's profile gives VICReg BYOL's asymmetric pair, which
  ``VICRegTransform`` (one transform for both views, solarize before blur) cannot express.
- Heads: SimCLR's and SimSiam's are lightly's ``ProjectionHead`` from sslpipe's blocks
  (``SimCLRProjectionHead`` puts a BatchNorm on the output layer, ``SimSiamProjectionHead`` has
  three layers); Barlow Twins' and VICReg's last layer has a bias (sslpipe's none: the loss
  standardises or differences it away, so it gets no gradient). SwAV's ``SwaVPrototypes`` has a
  bias (sslpipe's prototypes none), and lightly's SwAV codes every global crop
  (``crops_for_assign`` must equal the global count). Head initialisations differ (only the
  backbone is shared).
- LARS: lightly's trust ratio is ``eta·‖p‖ / (‖g‖ + wd·‖p‖ + eps)``, sslpipe's
  ``eta·‖p‖ / ‖g + wd·p‖``.
- MAE: the decoder is torchvision's encoder blocks (``MAEDecoder``: a learned-free sin-cos
  position table, xavier linears), sslpipe's its own blocks; masks come from torch's global
  generator.

``first_step_s`` is taken when the first ``optimizer.step()`` has returned; ``final_loss`` is the
last epoch's mean loss (sslpipe's epoch ``loss``).
"""

import argparse
import copy
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lightly.loss import (
    BarlowTwinsLoss,
    DINOLoss,
    KoLeoLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SwaVLoss,
    VICRegLoss,
)
from lightly.models import utils
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    ProjectionHead,
    SimSiamPredictionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
    VICRegProjectionHead,
)
from lightly.models.modules.masked_autoencoder import MAEDecoder
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    DINOTransform,
    MAETransform,
    MoCoV2Transform,
    SimCLRTransform,
    SimSiamTransform,
    SwaVTransform,
)
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from benchmarks.baselines import run_data_scores
from pipelines.config.layers import build_config, read_yaml
from pipelines.config.schema import Config
from pipelines.data.stream.view_config import PhotometricConfig, ViewGroupConfig
from pipelines.eval.encoders import eval_image_size
from pipelines.eval.frozen import KNN
from pipelines.train.model import backbone_from_config
from ssl_models.export import Encoder


def _notes() -> list[str]:
    """The module docstring's list of remaining differences, one string per item."""
    section = __doc__.split("Differences that remain")[1].split("\n\n")[1]
    return [" ".join(item.split()) for item in section.removeprefix("- ").split("\n- ")]


NOTES = _notes()


@dataclass(frozen=True)
class Progress:
    step: int  # optimizer steps taken before this one, 0-based
    total_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


@dataclass
class Method:
    """A method as a lightly user assembles it."""

    online: nn.ModuleDict  # what the optimizer trains
    transform: Callable  # PIL image -> list of view tensors
    loss: Callable[[list[Tensor], Progress], Tensor]  # views on the device -> scalar
    encoder: nn.Module  # the backbone kNN scores (a teacher's for DINO)
    extra: nn.ModuleDict = field(default_factory=nn.ModuleDict)  # EMA copies, loss state
    momentum_pairs: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    momentum: tuple[float, float] = (1.0, 1.0)  # EMA momentum at the first and last step
    fixed_lr: tuple[str, ...] = ()  # keys of ``online`` kept at the peak lr
    after_backward: Callable[[Progress], None] | None = None


def require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ValueError(f"config key '{key}': {why} (lightly's classes cannot mirror it)")


def momentum_copy(module: nn.Module) -> nn.Module:
    ema = copy.deepcopy(module)
    utils.deactivate_requires_grad(ema)
    return ema


# ---- views ----


def normalize(cfg: Config) -> dict[str, list[float]]:
    return {"mean": list(cfg.views.mean), "std": list(cfg.views.std)}


def group(cfg: Config, name: str, count: int | None = None) -> ViewGroupConfig:
    g = cfg.views.groups.get(name)
    require(g is not None, f"views.groups.{name}", "missing")
    require(count is None or g.count == count, f"views.groups.{name}.count", f"must be {count}")
    require(
        math.isclose(g.ratio[0], 3 / 4) and math.isclose(g.ratio[1], 4 / 3),
        f"views.groups.{name}.ratio",
        "lightly's crops use (3/4, 4/3)",
    )
    return g


def view_settings(g: ViewGroupConfig, name: str) -> list[PhotometricConfig]:
    """The photometric settings of each view, cycled as sslpipe cycles them."""
    for i, p in enumerate(g.photometric):
        where = f"views.groups.{name}.photometric[{i}].solarize_threshold"
        require(p.solarize_p == 0 or p.solarize_threshold == 0.5, where, "must be 0.5")
    return [g.photometric[v % len(g.photometric)] for v in range(g.count)]


def colour(p: PhotometricConfig, strength: float = 1.0) -> dict:
    """A view's jitter, grey and blur settings as lightly's transform arguments; the jitter
    values are divided by ``strength`` (DINOTransform's second view ignores a given one)."""
    return {
        "cj_prob": p.jitter_p,
        "cj_strength": strength,
        "cj_bright": p.brightness / strength,
        "cj_contrast": p.contrast / strength,
        "cj_sat": p.saturation / strength,
        "cj_hue": p.hue / strength,
        "random_gray_scale": p.grayscale_p,
        "gaussian_blur": p.blur_p,
        "sigmas": tuple(p.blur_sigma),
    }


def crop(g: ViewGroupConfig, name: str) -> dict:
    require(g.scale[1] == 1.0, f"views.groups.{name}.scale", "lightly's crops end at 1.0")
    return {"input_size": g.size, "min_scale": g.scale[0], "hf_prob": g.hflip_p}


def symmetric_views(cfg: Config, transform_cls: type) -> Callable:
    """SimCLR, MoCo v2, SimSiam: one view transform for both views, no solarization."""
    g = group(cfg, "global", 2)
    first, second = view_settings(g, "global")
    require(first == second, "views.groups.global.photometric", "must be one setting")
    require(first.solarize_p == 0, "views.groups.global.photometric", "no solarization here")
    return transform_cls(**crop(g, "global"), **colour(first), normalize=normalize(cfg))


def byol_views(cfg: Config) -> Callable:
    """BYOL's asymmetric pair (also Barlow Twins' and VICReg's in sslpipe's profile)."""
    g = group(cfg, "global", 2)
    classes = (BYOLView1Transform, BYOLView2Transform)
    views = [
        cls(
            **crop(g, "global"),
            **colour(p),
            solarization_prob=p.solarize_p,
            normalize=normalize(cfg),
        )
        for cls, p in zip(classes, view_settings(g, "global"), strict=True)
    ]
    return BYOLTransform(*views)


def swav_views(cfg: Config) -> Callable:
    g, loc = group(cfg, "global"), group(cfg, "local")
    settings = view_settings(g, "global") + view_settings(loc, "local")
    require(all(p == settings[0] for p in settings), "views.groups", "one photometric setting")
    require(settings[0].solarize_p == 0, "views.groups", "SwaVTransform does not solarize")
    require(g.hflip_p == loc.hflip_p, "views.groups.local.hflip_p", "must equal the global one")
    return SwaVTransform(
        crop_sizes=(g.size, loc.size),
        crop_counts=(g.count, loc.count),
        crop_min_scales=(g.scale[0], loc.scale[0]),
        crop_max_scales=(g.scale[1], loc.scale[1]),
        hf_prob=g.hflip_p,
        **colour(settings[0]),
        normalize=normalize(cfg),
    )


def dino_views(cfg: Config) -> Callable:
    g, loc = group(cfg, "global", 2), group(cfg, "local")
    first, second = view_settings(g, "global")
    local = view_settings(loc, "local")
    require(all(p == local[0] for p in local), "views.groups.local", "one photometric setting")
    jitter = [
        {k: v for k, v in colour(p).items() if k != "gaussian_blur"} for p in (first, local[0])
    ]
    jitter.append({k: v for k, v in colour(second).items() if k != "gaussian_blur"})
    require(all(j == jitter[0] for j in jitter), "views.groups", "one jitter/grey/sigma setting")
    require(first.solarize_p == local[0].solarize_p == 0, "views.groups", "view 2 solarizes only")
    require(g.hflip_p == loc.hflip_p, "views.groups.local.hflip_p", "must equal the global one")
    return DINOTransform(
        global_crop_size=g.size,
        global_crop_scale=tuple(g.scale),
        local_crop_size=loc.size,
        local_crop_scale=tuple(loc.scale),
        n_local_views=loc.count,
        hf_prob=g.hflip_p,
        **{k: v for k, v in colour(first, strength=0.5).items() if k != "gaussian_blur"},
        gaussian_blur=(first.blur_p, second.blur_p, local[0].blur_p),
        solarization_prob=second.solarize_p,
        normalize=normalize(cfg),
    )


def mae_views(cfg: Config) -> Callable:
    g = group(cfg, "global", 1)
    (p,) = view_settings(g, "global")
    plain = p.jitter_p == p.grayscale_p == p.blur_p == p.solarize_p == 0
    require(plain, "views.groups.global.photometric", "MAETransform has no colour ops")
    require(g.hflip_p == 0.5, "views.groups.global.hflip_p", "MAETransform flips at 0.5")
    require(g.scale[1] == 1.0, "views.groups.global.scale", "lightly's crops end at 1.0")
    return MAETransform(input_size=g.size, min_scale=g.scale[0], normalize=normalize(cfg))


# ---- methods: one builder each, (cfg, backbone, steps per epoch) -> Method ----


def blocks_head(dims: list[int], last_norm: nn.Module | None) -> ProjectionHead:
    """Linear-BN-ReLU between ``dims``, then the output layer (with ``last_norm``)."""
    hidden = [(i, o, nn.BatchNorm1d(o), nn.ReLU()) for i, o in itertools.pairwise(dims[:-1])]
    return ProjectionHead([*hidden, (dims[-2], dims[-1], last_norm, None)])


def by_resolution(backbone: nn.Module, local_views: list[Tensor]) -> list[Tensor]:
    """The local crops' features in one backbone pass, or none without local crops."""
    return [backbone(torch.cat(local_views))] if local_views else []


def simclr(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    require(not a.proj_last_batch_norm, "method_args.proj_last_batch_norm", "v1 head only")
    dims = [backbone.out_dim] + [a.proj_hidden_dim] * (a.proj_layers - 1) + [a.proj_dim]
    projector = blocks_head(dims, None)
    criterion = NTXentLoss(temperature=a.temperature)

    def loss(views: list[Tensor], _: Progress) -> Tensor:
        z1, z2 = projector(backbone(torch.cat(views))).chunk(2)  # both views in one batch
        return 2 * criterion(z1, z2)  # sslpipe's loss_a + loss_b

    online = nn.ModuleDict({"backbone": backbone, "projector": projector})
    return Method(online, symmetric_views(cfg, SimCLRTransform), loss, backbone)


def moco_v2(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    projector = MoCoProjectionHead(
        backbone.out_dim, a.proj_hidden_dim, a.proj_dim, a.proj_layers, batch_norm=False
    )
    backbone_m, projector_m = momentum_copy(backbone), momentum_copy(projector)
    criterion = NTXentLoss(temperature=a.temperature, memory_bank_size=(a.queue_size, a.proj_dim))

    def loss(views: list[Tensor], _: Progress) -> Tensor:
        q = projector(backbone(views[0]))
        with torch.no_grad():
            k = projector_m(backbone_m(views[1]))
        return criterion(q, k)  # one direction, as the reference; k joins the queue

    return Method(
        nn.ModuleDict({"backbone": backbone, "projector": projector}),
        symmetric_views(cfg, MoCoV2Transform),
        loss,
        backbone,
        extra=nn.ModuleDict(
            {"backbone_m": backbone_m, "projector_m": projector_m, "loss": criterion}
        ),
        momentum_pairs=[(backbone, backbone_m), (projector, projector_m)],
        momentum=(a.momentum, a.momentum),
    )


def byol(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    projector = BYOLProjectionHead(backbone.out_dim, a.proj_hidden_dim, a.proj_dim)
    predictor = BYOLPredictionHead(a.proj_dim, a.pred_hidden_dim, a.proj_dim)
    backbone_m, projector_m = momentum_copy(backbone), momentum_copy(projector)
    criterion = NegativeCosineSimilarity()

    def loss(views: list[Tensor], _: Progress) -> Tensor:
        p1, p2 = (predictor(projector(backbone(x))) for x in views)
        with torch.no_grad():
            z1, z2 = (projector_m(backbone_m(x)) for x in views)
        return 4 + 2 * (criterion(p1, z2) + criterion(p2, z1))  # Σ (2 − 2 cos), as sslpipe

    return Method(
        nn.ModuleDict({"backbone": backbone, "projector": projector, "predictor": predictor}),
        byol_views(cfg),
        loss,
        backbone,
        extra=nn.ModuleDict({"backbone_m": backbone_m, "projector_m": projector_m}),
        momentum_pairs=[(backbone, backbone_m), (projector, projector_m)],
        momentum=(a.momentum, a.momentum_final),
    )


def simsiam(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    dims = [backbone.out_dim] + [a.proj_hidden_dim] * (a.proj_layers - 1) + [a.proj_dim]
    projector = blocks_head(dims, nn.BatchNorm1d(a.proj_dim, affine=False))
    predictor = SimSiamPredictionHead(a.proj_dim, a.pred_hidden_dim, a.proj_dim)
    criterion = NegativeCosineSimilarity()

    def loss(views: list[Tensor], _: Progress) -> Tensor:
        z1, z2 = (projector(backbone(x)) for x in views)
        p1, p2 = predictor(z1), predictor(z2)
        return 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))

    return Method(
        nn.ModuleDict({"backbone": backbone, "projector": projector, "predictor": predictor}),
        symmetric_views(cfg, SimSiamTransform),
        loss,
        backbone,
        fixed_lr=("predictor",) if a.fix_predictor_lr else (),
    )


def two_view_regulariser(head_cls: type, criterion: nn.Module, scale: float = 1.0):
    """Barlow Twins and VICReg: one pass per view through backbone and projector."""

    def build(cfg: Config, backbone: nn.Module, spe: int) -> Method:
        a = cfg.method_args
        require(
            a.proj_layers == 3 or head_cls is VICRegProjectionHead, "method_args.proj_layers", "3"
        )
        layers = {"num_layers": a.proj_layers} if head_cls is VICRegProjectionHead else {}
        projector = head_cls(backbone.out_dim, a.proj_hidden_dim, a.proj_dim, **layers)

        def loss(views: list[Tensor], _: Progress) -> Tensor:
            z1, z2 = (projector(backbone(x)) for x in views)
            return scale * criterion(z1, z2)

        online = nn.ModuleDict({"backbone": backbone, "projector": projector})
        return Method(online, byol_views(cfg), loss, backbone)

    return build


def barlow_twins(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    criterion = BarlowTwinsLoss(lambda_param=a.lambda_)
    return two_view_regulariser(BarlowTwinsProjectionHead, criterion, a.loss_scale)(
        cfg, backbone, spe
    )


def vicreg(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    criterion = VICRegLoss(lambda_param=a.sim_weight, mu_param=a.var_weight, nu_param=a.cov_weight)
    return two_view_regulariser(VICRegProjectionHead, criterion)(cfg, backbone, spe)


def swav(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    n_global = group(cfg, "global").count
    require(a.crops_for_assign == n_global, "method_args.crops_for_assign", "every global crop")
    require(not a.hard_assignment, "method_args.hard_assignment", "soft codes only")
    require(a.proj_batch_norm, "method_args.proj_batch_norm", "SwaVProjectionHead has BatchNorm")
    projector = SwaVProjectionHead(backbone.out_dim, a.proj_hidden_dim, a.proj_dim)
    frozen_steps = round(a.freeze_prototypes_epochs * spe)
    prototypes = SwaVPrototypes(
        a.proj_dim, a.num_prototypes, n_steps_frozen_prototypes=frozen_steps
    )
    criterion = SwaVLoss(a.temperature, a.sinkhorn_iterations, a.epsilon)
    size = (a.queue_length, a.proj_dim)
    queues = nn.ModuleList(MemoryBankModule(size, feature_dim_first=False) for _ in range(n_global))
    queued = [0]  # embeddings pushed so far; sslpipe uses the queue once it is full

    def loss(views: list[Tensor], progress: Progress) -> Tensor:
        prototypes.normalize()
        b = views[0].shape[0]
        # one backbone pass per resolution, one projector pass over every crop, as sslpipe
        h = torch.cat(
            [backbone(torch.cat(views[:n_global])), *by_resolution(backbone, views[n_global:])]
        )
        z = nn.functional.normalize(projector(h), dim=1)
        scores = list(prototypes(z, progress.step).split(b))
        queue_scores = None
        if a.queue_length and progress.epoch >= a.queue_start_epoch:
            full = queued[0] >= a.queue_length
            coded = z[: n_global * b].detach().split(b)  # the global crops' embeddings
            banks = [q(zi, update=True)[1] for q, zi in zip(queues, coded, strict=True)]
            queued[0] += b
            if full:
                with torch.no_grad():
                    queue_scores = [prototypes(bank, progress.step) for bank in banks]
        return criterion(scores[:n_global], scores[n_global:], queue_scores)

    return Method(
        nn.ModuleDict({"backbone": backbone, "projector": projector, "prototypes": prototypes}),
        swav_views(cfg),
        loss,
        backbone,
        extra=nn.ModuleDict({"queues": queues}),
    )


def dino(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    require(a.head_layers == 3, "method_args.head_layers", "DINOProjectionHead has 3")
    require(
        a.warmup_teacher_temp_epochs == int(a.warmup_teacher_temp_epochs),
        "method_args.warmup_teacher_temp_epochs",
        "whole epochs",
    )

    def dino_head() -> DINOProjectionHead:
        return DINOProjectionHead(
            backbone.out_dim,
            a.hidden_dim,
            a.bottleneck_dim,
            a.out_dim,
            batch_norm=a.use_bn_in_head,
            freeze_last_layer=a.freeze_last_layer_epochs,
            norm_last_layer=a.norm_last_layer,
        )

    head, teacher_head = dino_head(), dino_head()
    # weight_norm's head cannot be deep-copied; the teacher starts as the student, as in DINO
    teacher_head.load_state_dict(head.state_dict())
    utils.deactivate_requires_grad(teacher_head)
    teacher_backbone = momentum_copy(backbone)
    criterion = DINOLoss(
        output_dim=a.out_dim,
        warmup_teacher_temp=a.warmup_teacher_temp,
        teacher_temp=a.teacher_temp,
        warmup_teacher_temp_epochs=int(a.warmup_teacher_temp_epochs),
        student_temp=a.student_temp,
        center_momentum=a.center_momentum,
    )
    koleo = KoLeoLoss()

    def loss(views: list[Tensor], progress: Progress) -> Tensor:
        globals_ = torch.cat(views[:2])  # (2B, 3, S, S), view-major
        with torch.no_grad():
            teacher = teacher_head(teacher_backbone(globals_))
        features = backbone(globals_)
        student = head(torch.cat([features, *by_resolution(backbone, views[2:])]))
        total = criterion(
            list(teacher.chunk(2)), list(student.chunk(len(views))), epoch=progress.epoch
        )
        if a.koleo_weight:  # on the student's backbone features, per global crop, as sslpipe
            total = total + a.koleo_weight * sum(koleo(f) for f in features.chunk(2))
        return total

    return Method(
        nn.ModuleDict({"backbone": backbone, "head": head}),
        dino_views(cfg),
        loss,
        teacher_backbone,
        extra=nn.ModuleDict(
            {"teacher_backbone": teacher_backbone, "teacher_head": teacher_head, "loss": criterion}
        ),
        momentum_pairs=[(backbone, teacher_backbone), (head, teacher_head)],
        momentum=(a.momentum, a.momentum_final),
        after_backward=lambda progress: head.cancel_last_layer_gradients(progress.epoch),
    )


def mae(cfg: Config, backbone: nn.Module, spe: int) -> Method:
    a = cfg.method_args
    require(not a.encoder_mask_tokens, "method_args.encoder_mask_tokens", "MAE's default only")
    p, seq = backbone.patch_size, backbone.grid**2 + 1  # tokens with the class token
    decoder = MAEDecoder(
        seq_length=seq,
        num_layers=a.decoder_depth,
        num_heads=a.decoder_heads,
        embed_input_dim=backbone.dim,
        hidden_dim=a.decoder_dim,
        mlp_dim=4 * a.decoder_dim,
        out_dim=p * p * 3,
    )
    mask = nn.ParameterDict({"token": nn.Parameter(torch.zeros(1, 1, a.decoder_dim))})
    nn.init.normal_(mask["token"], std=0.02)
    criterion = nn.MSELoss()

    def loss(views: list[Tensor], _: Progress) -> Tensor:
        images = views[0]
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask((b, seq), a.mask_ratio, device=images.device)
        # idx_keep[:, 0] is the class token; sslpipe's ViT takes patch indices
        latent = backbone.forward_tokens(images, keep=idx_keep[:, 1:] - 1)  # (B, 1 + K, D)
        tokens = utils.repeat_token(mask["token"], (b, seq))
        tokens = utils.set_at_index(tokens, idx_keep, decoder.embed(latent).type_as(tokens))
        pred = decoder.predict(utils.get_at_index(decoder.decode(tokens), idx_mask))
        target = utils.get_at_index(utils.patchify(images, p), idx_mask - 1)
        if a.norm_pix_loss:
            target = utils.normalize_mean_var(target, dim=-1)
        return criterion(pred, target)

    online = nn.ModuleDict({"backbone": backbone, "decoder": decoder, "mask": mask})
    return Method(online, mae_views(cfg), loss, backbone)


METHODS: dict[str, Callable[[Config, nn.Module, int], Method]] = {
    "simclr": simclr,
    "moco_v2": moco_v2,
    "byol": byol,
    "simsiam": simsiam,
    "barlow_twins": barlow_twins,
    "vicreg": vicreg,
    "swav": swav,
    "dino": dino,
    "mae": mae,
}


# ---- optimisation ----


def optimizer_and_schedule(
    cfg: Config, method: Method, total_steps: int, spe: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """sslpipe's groups and per-step schedule with lightly's parts."""
    o = cfg.optim
    require(o.bias_lr_ratio == 1.0, "optim.bias_lr_ratio", "1.0 only")
    require(o.weight_decay_end < 0, "optim.weight_decay_end", "no weight-decay schedule")
    groups = []
    for fixed in (False, True):
        modules = [m for k, m in method.online.items() if (k in method.fixed_lr) == fixed]
        if not modules:
            continue
        if o.exclude_bias_and_norm:
            decay, no_decay = utils.get_weight_decay_parameters(modules)
        else:
            decay, no_decay = [p for m in modules for p in m.parameters()], []
        for params, wd in ((decay, o.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": wd, "fixed_lr": fixed})
    lr = o.base_lr * cfg.train.batch_size / 256
    if o.name == "lars":
        optimizer = LARS(groups, lr=lr, momentum=o.momentum, trust_coefficient=o.lars_eta)
    elif o.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    elif o.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=o.betas)
    else:
        raise ValueError(f"config key 'optim.name': {o.name!r} is not lars, sgd or adamw")
    warmup = round(o.warmup_epochs * spe)

    def scale(step: int) -> float:
        return cosine_warmup_schedule(
            step, total_steps + 1, 1.0, o.final_lr_ratio, warmup, warmup_start_value=0.0
        )

    lambdas = [(lambda _: 1.0) if g["fixed_lr"] else scale for g in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def clip(cfg: Config, params: list[nn.Parameter]) -> None:
    limit = cfg.optim.clip_grad
    if limit <= 0:
        return
    if cfg.optim.clip_grad_per_parameter:
        for p in params:
            nn.utils.clip_grad_norm_([p], limit)
    else:
        nn.utils.clip_grad_norm_(params, limit)


def train(
    cfg: Config, method: Method, loader: DataLoader, epochs: int, device: torch.device
) -> dict:
    """The plain loop; returns timings, steps and losses."""
    spe = len(loader)
    total = spe * epochs
    optimizer, scheduler = optimizer_and_schedule(cfg, method, total, spe)
    params = list(method.online.parameters())
    step, first_step_at, epoch_losses = 0, None, []
    start = time.time()
    method.online.train()
    method.extra.train()
    for epoch in range(epochs):
        losses = []
        for views, _ in loader:
            progress = Progress(step, total, spe)
            views = [v.to(device, non_blocking=True) for v in views]
            loss = method.loss(views, progress)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if method.after_backward is not None:
                method.after_backward(progress)
            clip(cfg, params)
            optimizer.step()
            scheduler.step()
            if first_step_at is None:
                first_step_at = time.time()
            m = cosine_schedule(step, total + 1, *method.momentum)  # sslpipe's ends at `total`
            for online, ema in method.momentum_pairs:
                utils.update_momentum(online, ema, m)
            losses.append(loss.detach())
            step += 1
        epoch_losses.append(torch.stack(losses).float().cpu())
        mean = float(epoch_losses[-1].mean())
        print(
            f"epoch {epoch + 1}/{epochs}: loss {mean:.4f} ({time.time() - start:.1f}s)",
            file=sys.stderr,
        )
    curve = torch.cat(epoch_losses)
    return {
        "first_step_at": first_step_at,
        "train_s": time.time() - start,
        "steps": step,
        "first_loss": float(curve[0]),
        "last_loss": float(curve[-1]),
        "final_loss": float(epoch_losses[-1].mean()),
    }


def sslpipe_steps_per_epoch(cfg: Config, rows: int) -> int:
    """``pipelines.train.dry_run.steps_per_epoch``: each worker's share in whole batches."""
    workers = cfg.train.workers
    return (rows // workers) // (cfg.train.batch_size // workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="sslpipe's resolved config (--print-config)"
    )
    parser.add_argument("--train-folder", required=True, help="ImageFolder of the training images")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--started-at", type=float, required=True, help="UNIX time the run began")
    parser.add_argument("--out", required=True, help="result JSON to write")
    args = parser.parse_args(argv)

    cfg = build_config(read_yaml(args.config))
    require(cfg.method in METHODS, "method", f"one of {sorted(METHODS)}")
    require(cfg.train.accumulate_steps == 1, "train.accumulate_steps", "1 only")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(args.seed)
    backbone = backbone_from_config(cfg)  # sslpipe's weights for this seed
    dataset = ImageFolder(args.train_folder)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,  # as sslpipe: whole batches only
        num_workers=os.cpu_count() or 0,
        pin_memory=device.type == "cuda",
    )
    method = METHODS[cfg.method](cfg, backbone, len(loader))
    dataset.transform = method.transform
    method.online.to(device)
    method.extra.to(device)
    notes = list(NOTES)
    if len(loader) != sslpipe_steps_per_epoch(cfg, len(dataset)):
        notes.append(
            f"steps per epoch {len(loader)} here, {sslpipe_steps_per_epoch(cfg, len(dataset))} in "
            f"sslpipe ({cfg.train.workers} workers)"
        )

    run = train(cfg, method, loader, args.epochs, device)
    encoder = Encoder(method.encoder, cfg.views.mean, cfg.views.std, eval_image_size(cfg))
    knn = run_data_scores(cfg, {"lightly": encoder})["lightly"][KNN]
    result = {
        "method": cfg.method,
        "seed": args.seed,
        "epochs": args.epochs,
        "knn_top1": knn,
        "wall_s": time.time() - args.started_at,
        "first_step_s": run["first_step_at"] - args.started_at,
        "train_s": run["train_s"],
        "images": run["steps"] * cfg.train.batch_size,
        "steps": run["steps"],
        "final_loss": run["final_loss"],
        "first_loss": run["first_loss"],
        "last_loss": run["last_loss"],
        "notes": notes,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "notes"}))


if __name__ == "__main__":
    main()
