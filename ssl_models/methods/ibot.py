"""iBOT (Zhou et al. 2022, arXiv:2111.07832): masked image modeling with an online tokenizer.

DINO's self-distillation on the [CLS] token across crops, plus a masked-patch one: the student
sees its two global crops with blockwise-masked patches replaced by the mask token (each image
masked with probability 0.5, at a ratio uniform in [0.1, 0.5]: the reference's ``--pred_ratio
0 0.3 --pred_ratio_var 0 0.2``), the EMA teacher sees them intact, and at each masked position
the teacher's patch distribution is the student's target. One head projects [CLS] and patch
tokens (``--shared_head true``); the patch outputs have their own centre and teacher
temperature. Local crops reach the student unmasked and only through [CLS].

Reuses DINO's head, loss, centre and temperature schedule; the exported encoder is the
teacher's backbone, as the reference's ``backbone (t)`` checkpoints.

``koleo_weight`` (not iBOT's recipe, off by default) adds DINOv2's KoLeo regulariser (Oquab et
al. 2024, arXiv:2304.07193) on the student's backbone [CLS] of each global crop; the laptop
profile uses it, where the small [CLS] head's output goes nearly uniform.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.backbones.masking import ibot_mask_counts, step_generator, variable_block_masking
from ssl_models.heads import DINOHead, normed_last_layer
from ssl_models.losses import (
    DINOCenter,
    dino_loss,
    ibot_loss,
    koleo_loss_per_crop,
    teacher_temperature_per_epoch,
)
from ssl_models.methods.base import Progress, SSLMethod, view_group
from ssl_models.methods.single_view import require_vit
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class IBOTConfig:
    out_dim: int = 8192  # [CLS] prototypes, the README's --out_dim 8192
    patch_out_dim: int = 8192  # patch prototypes; must equal out_dim when the head is shared
    shared_head: bool = True  # one last layer for [CLS] and patches; False: a second one
    hidden_dim: int = 2048  # the head's MLP width (the MLP is shared in either case)
    bottleneck_dim: int = 256  # the L2-normalised bottleneck before the last layer
    head_layers: int = 3  # linear layers before the bottleneck
    norm_last_layer: bool = False  # the README's ViT-S/16 run trains the last layer's norm
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04  # [CLS] teacher temperature at the start
    teacher_temp: float = 0.07  # after the warmup (README: --teacher_temp 0.07)
    warmup_teacher_patch_temp: float = 0.04  # the same for the patch outputs
    teacher_patch_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30.0  # both temperatures warm up linearly this long
    center_momentum: float = 0.9  # EMA of the teacher's [CLS] output mean
    center_momentum_patch: float = 0.9  # EMA of the teacher's patch output mean
    lambda_cls: float = 1.0  # weight of the [CLS] loss (the reference's lambda1)
    lambda_patch: float = 1.0  # weight of the masked-patch loss (lambda2)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # 0.3 ± 0.2, uniform per masked image
    mask_probability: float = 0.5  # share of images masked at all (pred_ratio 0 or 0.3 ± 0.2)
    min_aspect: float = 0.3  # masked block aspect in [0.3, 1/0.3]; smallest block (grid/3)²
    momentum: float = 0.996  # teacher EMA at the start, cosine to momentum_final
    momentum_final: float = 1.0
    freeze_last_layer_epochs: int = 1  # the last layer(s) get no update this many epochs
    # not iBOT's recipe (off by default; the laptop profile sets 0.1)
    koleo_weight: float = 0.0  # DINOv2: 0.1, on the student's backbone [CLS] per global crop


class IBOT(SSLMethod):
    """batch["global"]: (B, 2, 3, S, S); batch["local"] (optional): (B, V, 3, s, s)
    -> {loss, cls_loss, patch_loss, [koleo_loss,] masked_fraction, teacher_output (2B, K),
    teacher_patch_output (2B, L, K)}; the last two feed the centres in :meth:`on_step_end`.
    koleo_loss only with ``koleo_weight``."""

    encoder_name = "teacher_backbone"

    def __init__(self, backbone: nn.Module, cfg: IBOTConfig) -> None:
        super().__init__()
        if cfg.shared_head and cfg.patch_out_dim != cfg.out_dim:
            raise ValueError(
                f"ibot: a shared head needs patch_out_dim == out_dim, got {cfg.patch_out_dim} "
                f"and {cfg.out_dim}; set shared_head: false for different sizes"
            )
        self.cfg = cfg
        self.backbone = require_vit(backbone, "ibot")
        self.backbone.enable_mask_token()
        self.head = DINOHead(
            self.backbone.dim,
            cfg.out_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.head_layers,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.patch_last_layer = (
            None
            if cfg.shared_head
            else normed_last_layer(cfg.bottleneck_dim, cfg.patch_out_dim, cfg.norm_last_layer)
        )
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.teacher_patch_last_layer = (
            None if self.patch_last_layer is None else momentum_copy(self.patch_last_layer)
        )
        self.momentum_schedule = (cfg.momentum, cfg.momentum_final)
        self.frozen_epochs = cfg.freeze_last_layer_epochs
        self.center = DINOCenter(cfg.out_dim, cfg.center_momentum)
        self.patch_center = DINOCenter(cfg.patch_out_dim, cfg.center_momentum_patch)
        # schedule-driven, set by on_step_start from the step (a resumed run recomputes them)
        self.teacher_temp = cfg.warmup_teacher_temp
        self.teacher_patch_temp = cfg.warmup_teacher_patch_temp
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def project(
        self, head: DINOHead, patch_layer: nn.Module | None, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, 1 + L, D) -> [CLS] outputs (N, K) and patch outputs (N, L, K')."""
        n = tokens.shape[0]
        if patch_layer is None:
            out = head(tokens.flatten(0, 1)).unflatten(0, (n, -1))
            return out[:, 0], out[:, 1:]
        z = head.bottleneck(tokens.flatten(0, 1)).unflatten(0, (n, -1))
        return head.last_layer(z[:, 0]), patch_layer(z[:, 1:])

    def masks(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, L) bool, blockwise; smallest block (min grid side // 3)² as the
        reference's data loader (16 patches on a 14 × 14 grid)."""
        grid = self.backbone.grid_of(images)
        counts = ibot_mask_counts(
            images.shape[0],
            grid[0] * grid[1],
            self.cfg.mask_ratio,
            self.cfg.mask_probability,
            self.rng,
        )
        min_block = max(1, (min(grid) // 3) ** 2)
        mask = variable_block_masking(counts, grid, min_block, self.cfg.min_aspect, None, self.rng)
        return mask.to(images.device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views = view_group(batch, "global", "iBOT", count=2)
        crops = global_views.transpose(0, 1).flatten(0, 1)  # (2B, 3, S, S), view-major
        masks = self.masks(crops)  # (2B, L)

        with torch.no_grad():
            t_cls, t_patch = self.project(
                self.teacher_head,
                self.teacher_patch_last_layer,
                self.teacher_backbone.forward_tokens(crops),
            )
        tokens = self.backbone.forward_tokens(crops, mask=masks)
        s_cls, s_patch = self.project(self.head, self.patch_last_layer, tokens)
        student = list(s_cls.chunk(2))
        if "local" in batch:
            local_views = view_group(batch, "local", "iBOT")
            local = local_views.transpose(0, 1).flatten(0, 1)  # (VB, 3, s, s)
            local_cls = self.head(self.backbone.forward_tokens(local)[:, 0])
            student += list(local_cls.chunk(local_views.shape[1]))

        c = self.cfg
        cls_loss = dino_loss(
            student, t_cls.chunk(2), self.center.center, c.student_temp, self.teacher_temp
        )
        patch_loss = ibot_loss(
            s_patch.chunk(2),
            t_patch.chunk(2),
            masks.chunk(2),
            self.patch_center.center,
            c.student_temp,
            self.teacher_patch_temp,
        )
        loss = c.lambda_cls * cls_loss + c.lambda_patch * patch_loss
        extra = {}
        if c.koleo_weight:
            koleo = koleo_loss_per_crop(tokens[:, 0], 2)  # the student's [CLS]
            loss = loss + c.koleo_weight * koleo
            extra["koleo_loss"] = koleo.detach()
        return {
            "loss": loss,
            "cls_loss": cls_loss.detach(),
            "patch_loss": patch_loss.detach(),
            **extra,
            "masked_fraction": masks.float().mean(),
            "teacher_output": t_cls,
            "teacher_patch_output": t_patch,
        }

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]
        if self.patch_last_layer is not None:
            pairs.append((self.patch_last_layer, self.teacher_patch_last_layer))
        return pairs

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.head.last_layer, self.patch_last_layer) if m is not None]

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        epoch = progress.epoch  # once per epoch, as the reference's teacher_temp_schedule[epoch]
        c = self.cfg
        self.teacher_temp = teacher_temperature_per_epoch(
            epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs
        )
        self.teacher_patch_temp = teacher_temperature_per_epoch(
            epoch, c.warmup_teacher_patch_temp, c.teacher_patch_temp, c.warmup_teacher_temp_epochs
        )
        return {**super().on_step_start(progress), "teacher_temp": self.teacher_temp}

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        super().on_step_end(outputs, progress)  # the teacher's EMA
        self.center.update(outputs["teacher_output"])
        # the mean over every patch of every image (the reference's mean over patches, then
        # over images: the same, all images having L patches)
        self.patch_center.update(outputs["teacher_patch_output"].flatten(0, 1))
