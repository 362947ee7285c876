"""DINO (Caron et al. 2021, arXiv:2104.14294): self-distillation with no labels.

A student (backbone + DINO head) sees every crop, two global and several local ones; a teacher,
its EMA (momentum 0.996 → 1 on a cosine), sees only the global crops. The teacher's output is
centred (a running mean, momentum 0.9, over every worker's batch) and sharpened (temperature
warmed up from 0.04 to 0.07); the student's is softened by 0.1. The loss is the cross-entropy
over every (teacher crop, other student crop) pair. The head's last layer is frozen during the
first epoch. The exported encoder is the teacher's backbone, the one DINO evaluates.

``koleo_weight`` (not DINO's recipe) adds DINOv2's KoLeo regulariser (Oquab et al. 2024,
arXiv:2304.07193) on the student's backbone features of each global crop, as iBOT's option
does; the laptop profile uses it, where the small head's output goes nearly uniform.

As the reference's ``MultiCropWrapper``, crops of one resolution go through the backbone together
(global crops in one batch, local crops in another), then the head sees all crops at once.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import DINOHead
from ssl_models.losses import (
    DINOCenter,
    dino_loss,
    koleo_loss_per_crop,
    teacher_temperature_per_epoch,
)
from ssl_models.methods.base import Progress, SSLMethod, view_group
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class DINOConfig:
    out_dim: int = 65536  # K, the head's output; "large values like 65k work well" on ImageNet
    hidden_dim: int = 2048  # the head's MLP width
    bottleneck_dim: int = 256  # the L2-normalised bottleneck before the last layer
    head_layers: int = 3  # linear layers before the bottleneck
    # the reference's default; its released ResNet-50 (and the laptop profile) set it
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # fix the last layer's weight norm to 1: more stable
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04  # teacher temperature at the start
    teacher_temp: float = 0.07  # after the warmup; "anything above 0.07 is unstable"
    warmup_teacher_temp_epochs: float = 30.0  # linear warmup of the teacher temperature
    center_momentum: float = 0.9  # EMA of the teacher-output mean
    momentum: float = 0.996  # teacher EMA at the start, cosine to momentum_final
    momentum_final: float = 1.0
    freeze_last_layer_epochs: int = 1  # the last layer gets no update for this many epochs
    koleo_weight: float = 0.0  # DINOv2: 0.1, on the student's backbone features per global crop


class DINO(SSLMethod):
    """batch["global"]: (B, 2, 3, S, S); batch["local"] (optional): (B, L, 3, s, s)
    -> {loss, [koleo_loss,] teacher_output}; ``teacher_output`` (2B, K) feeds the centre update
    in :meth:`on_step_end`; koleo_loss only with ``koleo_weight``."""

    encoder_name = "teacher_backbone"

    def __init__(self, backbone: nn.Module, cfg: DINOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = DINOHead(
            backbone.out_dim,
            cfg.out_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.head_layers,
            cfg.use_bn_in_head,
            cfg.norm_last_layer,
        )
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.momentum_schedule = (cfg.momentum, cfg.momentum_final)
        self.frozen_epochs = cfg.freeze_last_layer_epochs
        self.center = DINOCenter(cfg.out_dim, cfg.center_momentum)
        # set per step by on_step_start from the schedule; a pure function of the step, so a
        # resumed run recomputes it
        self.teacher_temp = cfg.warmup_teacher_temp

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views = view_group(batch, "global", "DINO", count=2)
        n_global = global_views.shape[1]
        crops = [global_views.transpose(0, 1).flatten(0, 1)]  # (2B, 3, S, S), view-major
        n_local = 0
        if "local" in batch:
            local_views = view_group(batch, "local", "DINO")
            n_local = local_views.shape[1]
            crops.append(local_views.transpose(0, 1).flatten(0, 1))  # (LB, 3, s, s)

        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_backbone(crops[0]))  # (2B, K)
        global_features = self.backbone(crops[0])  # (2B, D)
        features = torch.cat([global_features] + [self.backbone(x) for x in crops[1:]])
        student_out = self.head(features)  # ((2 + L)B, K)

        loss = dino_loss(
            student_out.chunk(n_global + n_local),
            teacher_out.chunk(n_global),
            self.center.center,
            self.cfg.student_temp,
            self.teacher_temp,
        )
        out = {"teacher_output": teacher_out}
        if self.cfg.koleo_weight:
            koleo = koleo_loss_per_crop(global_features, n_global)
            loss = loss + self.cfg.koleo_weight * koleo
            out["koleo_loss"] = koleo.detach()
        return {"loss": loss, **out}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.head.last_layer]

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        # once per epoch, as the reference's teacher_temp_schedule[epoch]
        self.teacher_temp = teacher_temperature_per_epoch(
            progress.epoch,
            self.cfg.warmup_teacher_temp,
            self.cfg.teacher_temp,
            self.cfg.warmup_teacher_temp_epochs,
        )
        return {**super().on_step_start(progress), "teacher_temp": self.teacher_temp}

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        super().on_step_end(outputs, progress)  # the teacher's EMA
        self.center.update(outputs["teacher_output"])
