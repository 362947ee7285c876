"""DINOv2 (Oquab et al. 2024, arXiv:2304.07193): DINO + iBOT + KoLeo, Sinkhorn-Knopp centring.

The student sees two blockwise-masked global crops and unmasked local crops; the EMA teacher
(momentum 0.992 → 1) sees the global crops intact. Losses, as the reference ``ssl_meta_arch``:

- image level: DINO's cross-entropy from the teacher's [CLS] targets of one global crop to the
  student's [CLS] outputs of every other crop, the mean over (teacher, student) pairs;
- patch level: iBOT's cross-entropy at the masked patches (exactly half the global crops are
  masked, at ratios stratified over [0.1, 0.5]);
- KoLeo (weight 0.1) on the student's backbone [CLS] of each global crop, summed over the two.

The teacher's targets are Sinkhorn-Knopp codes (3 iterations, ε = teacher temperature, over
the global batch) instead of DINO's centred softmax, so there is no centre to keep: the paper's
choice (§4, from SwAV) and its ViT-g recipe's ``centering: sinkhorn_knopp``. Image and patch
tokens get separate heads (``ibot.separate_head: true``, also from the ViT-g recipe; the
default config, for the smaller ViT-L/16 "short" run, shares one). The heads' last-layer norms
are trained, as the reference's ``DINOHead``. The exported encoder is the teacher's backbone.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.backbones.masking import (
    dinov2_mask_counts,
    step_generator,
    variable_block_masking,
)
from ssl_models.heads import DINOHead
from ssl_models.losses import (
    dino_loss_from_targets,
    koleo_loss_per_crop,
    masked_patch_loss,
    sinkhorn,
    teacher_temperature,
)
from ssl_models.methods.base import Progress, SSLMethod, view_group
from ssl_models.methods.single_view import require_vit
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class DINOv2Config:
    out_dim: int = 65536  # [CLS] prototypes (dino.head_n_prototypes)
    patch_out_dim: int = 65536  # patch prototypes of the separate head (ibot.head_n_prototypes)
    separate_head: bool = True  # the ViT-g recipe; false: the patch tokens use the [CLS] head
    hidden_dim: int = 2048  # both heads' MLP width
    bottleneck_dim: int = 256  # both heads' bottleneck (ViT-g: 384)
    head_layers: int = 3
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04  # teacher temperature (Sinkhorn's ε) at the start
    teacher_temp: float = 0.07  # after the warmup
    warmup_teacher_temp_epochs: float = 30.0
    sinkhorn_iterations: int = 3
    ibot_weight: float = 1.0  # ibot.loss_weight
    koleo_weight: float = 0.1  # dino.koleo_loss_weight
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # ibot.mask_ratio_min_max
    mask_probability: float = 0.5  # ibot.mask_sample_probability: exactly this share masked
    min_block_patches: int = 4  # the MaskingGenerator's min_num_patches
    max_block_fraction: float = 0.5  # its max_num_patches, a fraction of the patches
    min_aspect: float = 0.3
    momentum: float = 0.992  # teacher EMA at the start (ViT-g: 0.994), cosine to the final
    momentum_final: float = 1.0
    freeze_last_layer_epochs: int = 1
    gather_distributed: bool = True  # Sinkhorn over the global batch, as the reference


class DINOv2(SSLMethod):
    """batch["global"]: (B, 2, 3, S, S); batch["local"] (optional): (B, V, 3, s, s)
    -> {loss, dino_loss, ibot_loss, koleo_loss, masked_fraction}."""

    encoder_name = "teacher_backbone"

    def __init__(self, backbone: nn.Module, cfg: DINOv2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "dino_v2")
        self.backbone.enable_mask_token()
        dims = (cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers)
        dim = self.backbone.dim
        self.head = DINOHead(dim, cfg.out_dim, *dims, norm_last_layer=False)
        self.patch_head = (
            DINOHead(dim, cfg.patch_out_dim, *dims, norm_last_layer=False)
            if cfg.separate_head
            else None
        )
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.teacher_patch_head = (
            None if self.patch_head is None else momentum_copy(self.patch_head)
        )
        self.momentum_schedule = (cfg.momentum, cfg.momentum_final)
        self.frozen_epochs = cfg.freeze_last_layer_epochs
        self.teacher_temp = cfg.warmup_teacher_temp  # set per step by on_step_start
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def masks(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, L) bool: ``int(N · probability)`` images blockwise-masked."""
        grid = self.backbone.grid_of(images)
        length = grid[0] * grid[1]
        c = self.cfg
        counts = dinov2_mask_counts(
            images.shape[0], length, c.mask_ratio, c.mask_probability, self.rng
        )
        max_block = max(1, int(c.max_block_fraction * length))
        mask = variable_block_masking(
            counts, grid, c.min_block_patches, c.min_aspect, max_block, self.rng
        )
        return mask.to(images.device)

    def codes(self, outputs: torch.Tensor) -> torch.Tensor:
        """Teacher outputs (N, K) -> Sinkhorn-Knopp targets (N, K), rows summing to 1."""
        return sinkhorn(
            outputs, self.teacher_temp, self.cfg.sinkhorn_iterations, self.cfg.gather_distributed
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views = view_group(batch, "global", "DINOv2", count=2)
        crops = global_views.transpose(0, 1).flatten(0, 1)  # (2B, 3, S, S), view-major
        masks = self.masks(crops)  # (2B, L)
        shared = self.patch_head is None
        teacher_patch_head = self.teacher_head if shared else self.teacher_patch_head
        patch_head = self.head if shared else self.patch_head

        with torch.no_grad():
            tokens = self.teacher_backbone.forward_tokens(crops)  # (2B, 1 + L, D)
            cls_targets = self.codes(self.teacher_head(tokens[:, 0]))  # (2B, K)
            # the heads see only the masked patches, the only ones with a loss
            patch_targets = self.codes(teacher_patch_head(tokens[:, 1:][masks]))  # (M, K')

        tokens = self.backbone.forward_tokens(crops, mask=masks)
        cls_tokens = tokens[:, 0]  # (2B, D)
        student = list(self.head(cls_tokens).chunk(2))
        if "local" in batch:
            local_views = view_group(batch, "local", "DINOv2")
            local = local_views.transpose(0, 1).flatten(0, 1)  # (VB, 3, s, s)
            local_out = self.head(self.backbone.forward_tokens(local)[:, 0])
            student += list(local_out.chunk(local_views.shape[1]))

        image_loss = dino_loss_from_targets(student, cls_targets.chunk(2), self.cfg.student_temp)
        patch_loss = masked_patch_loss(
            patch_head(tokens[:, 1:][masks]), patch_targets, masks, self.cfg.student_temp
        )
        koleo = koleo_loss_per_crop(cls_tokens, 2)
        loss = image_loss + self.cfg.ibot_weight * patch_loss + self.cfg.koleo_weight * koleo
        return {
            "loss": loss,
            "dino_loss": image_loss.detach(),
            "ibot_loss": patch_loss.detach(),
            "koleo_loss": koleo.detach(),
            "masked_fraction": masks.float().mean(),
        }

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]
        if self.patch_head is not None:
            pairs.append((self.patch_head, self.teacher_patch_head))
        return pairs

    def frozen_modules(self) -> list[nn.Module]:
        return [h.last_layer for h in (self.head, self.patch_head) if h is not None]

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        epoch = progress.step / max(1, progress.steps_per_epoch)
        c = self.cfg
        self.teacher_temp = teacher_temperature(
            epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs
        )
        return {**super().on_step_start(progress), "teacher_temp": self.teacher_temp}
