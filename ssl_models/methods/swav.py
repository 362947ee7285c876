"""SwAV (Caron et al. 2020, arXiv:2006.09882): multi-crop, online clustering onto prototypes
with Sinkhorn-Knopp codes, and swapped prediction of one crop's code from the other crops.

Follows ``facebookresearch/swav`` ``main_swav.py``: prototypes L2-normalised before every step,
their gradient cancelled during the first iterations, and a queue of past embeddings joining
the Sinkhorn batch once it is full. Here the queue is one buffer, the same on every worker,
filled with all workers' embeddings (the reference keeps one per GPU): it travels in the
checkpoint whole, whichever rank writes it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models import distributed
from ssl_models.heads import Prototypes, mlp
from ssl_models.losses import swav_loss
from ssl_models.methods.base import Progress, SSLMethod


@dataclass(frozen=True)
class SwAVConfig:
    num_prototypes: int = 3000  # K; the reference's ImageNet value
    temperature: float = 0.1  # τ of the softmax over prototype scores
    epsilon: float = 0.05  # Sinkhorn entropy weight; larger gives flatter codes (collapse)
    sinkhorn_iterations: int = 3  # enough for the codes to be near-equipartitioned
    # one-hot codes (argmax of Sinkhorn's): kept as the reference README's collapse workaround;
    # the paper (section 3.1) found them worse than its soft default
    hard_assignment: bool = False
    crops_for_assign: int = 2  # the first n global crops get codes (reference: crops 0 and 1)
    proj_hidden_dim: int = 2048  # the reference's hidden_mlp
    proj_dim: int = 128  # feat_dim: the embedding the prototypes live in
    # the reference's head has BatchNorm; kept as an option since its README lists removing
    # it as a cure for collapse
    proj_batch_norm: bool = True
    freeze_prototypes_epochs: float = 1.0  # reference: 313 iterations, one epoch at batch 4096
    queue_length: int = 3840  # past embeddings per coded crop, over all workers; 0 disables
    queue_start_epoch: int = 15  # the queue starts filling here (reference epoch_queue_starts)
    gather_distributed: bool = True  # Sinkhorn on the global batch, as the reference


class SwAV(SSLMethod):
    """batch["global"]: (B, Vg, 3, H, W) and optionally batch["local"]: (B, Vl, 3, h, w),
    normalised -> {loss, queue_used, embeddings (n_assign, B, proj_dim) for the queue hook}."""

    def __init__(self, backbone: nn.Module, cfg: SwAVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            2,
            batch_norm=cfg.proj_batch_norm,
        )
        self.prototypes = Prototypes(cfg.proj_dim, cfg.num_prototypes)
        self.frozen_epochs = cfg.freeze_prototypes_epochs
        # newest first; rows beyond queue_filled are empty
        self.register_buffer(
            "queue", torch.zeros(cfg.crops_for_assign, cfg.queue_length, cfg.proj_dim)
        )
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def queue_ready(self) -> bool:
        """The reference uses the queue only once it is full."""
        return self.cfg.queue_length > 0 and int(self.queue_filled) >= self.cfg.queue_length

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        crops = [batch["global"]] + ([batch["local"]] if "local" in batch else [])
        for name, x in zip(("global", "local"), crops, strict=False):
            if x.ndim != 5:
                raise ValueError(f"SwAV expects {name} views (B, V, 3, H, W), got {tuple(x.shape)}")
        b, n_global = crops[0].shape[:2]
        if n_global < self.cfg.crops_for_assign:
            raise ValueError(
                f"SwAV assigns codes to {self.cfg.crops_for_assign} global crops, got {n_global}"
            )
        # one backbone pass per resolution, then one projector pass over every crop (its
        # BatchNorm sees all crops together, as the reference's multi-resolution forward)
        h = torch.cat([self.backbone(x.transpose(0, 1).flatten(0, 1)) for x in crops])
        z = F.normalize(self.projector(h), dim=1)  # (V·B, proj_dim), crop-major
        scores = list(self.prototypes(z).split(b))  # V × (B, K)

        queue_scores = None
        if self.queue_ready():
            with torch.no_grad():
                queue_scores = [self.prototypes(q) for q in self.queue]  # n_assign × (L, K)
        loss = swav_loss(
            scores,
            self.cfg.crops_for_assign,
            self.cfg.temperature,
            self.cfg.epsilon,
            self.cfg.sinkhorn_iterations,
            queue_scores,
            self.cfg.gather_distributed,
            self.cfg.hard_assignment,
        )
        embeddings = z[: self.cfg.crops_for_assign * b].detach().view(-1, b, z.shape[1])
        return {
            "loss": loss,
            "queue_used": torch.tensor(float(queue_scores is not None)),
            "embeddings": embeddings,
        }

    def frozen_modules(self) -> list[nn.Module]:
        return [self.prototypes]

    @torch.no_grad()
    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.prototypes.normalize_()
        return {}

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        if self.cfg.queue_length == 0 or progress.epoch < self.cfg.queue_start_epoch:
            return
        local = outputs["embeddings"].transpose(0, 1)  # (B, n_assign, D): gather along dim 0
        new = distributed.gather_no_grad(local.contiguous()).transpose(0, 1)  # (n_assign, W·B, D)
        self.queue.copy_(
            torch.cat([new.to(self.queue.dtype), self.queue], dim=1)[:, : self.cfg.queue_length]
        )
        self.queue_filled.fill_(min(self.cfg.queue_length, int(self.queue_filled) + new.shape[1]))
