"""MoCo v1 (He et al. 2020, arXiv:1911.05722) and v2 (Chen et al. 2020, arXiv:2003.04297):
a query encoder trained by InfoNCE against the key of the other view and a queue of past keys;
the key encoder is a momentum copy of the query encoder.

v1 and v2 are one class with two recipes: v1 has a linear head and T = 0.07; v2 an MLP head
(fc-ReLU-fc, no BatchNorm), T = 0.2, blur in the augmentation and a cosine learning rate.
The loss is one-directional (view 1 queries, view 2 keys), as the reference code.

Shuffle-BN (§3.3): with several workers the key batch is shuffled across workers before the key
encoder and un-shuffled after, so a query and its key never share BatchNorm statistics. In one
process there is nothing to shuffle across: the key encoder's BatchNorm sees the same images as
the query encoder's, exactly as the reference on one GPU (where the shuffle is a permutation
within the batch and changes no statistic).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models import distributed
from ssl_models.heads import mlp
from ssl_models.losses import info_nce_loss
from ssl_models.methods.base import Progress, SSLMethod, view_group
from ssl_models.momentum import momentum_copy


@dataclass(frozen=True)
class MoCoConfig:
    temperature: float = 0.2  # τ of the InfoNCE logits: v1 0.07, v2 0.2
    proj_layers: int = 2  # v1: 1 (the linear fc layer); v2: 2 (fc-ReLU-fc)
    proj_hidden_dim: int = 2048  # v2's hidden width, the backbone's (2048 for ResNet-50)
    proj_dim: int = 128  # dimension of queries, keys and the queue
    queue_size: int = 65536  # K negatives kept from past batches
    momentum: float = 0.999  # key-encoder EMA, constant through training in v1 and v2
    shuffle_bn: bool = True  # shuffle keys across workers around the key encoder (no-op alone)


class MemoryQueue(nn.Module):
    """A first-in first-out queue of the last ``size`` keys, checkpointed with the model.

    keys: (size, dim) buffer, L2-normalised random vectors at the start (as the reference);
    ptr: where the next key goes. Writing wraps around the end.
    """

    keys: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"MemoryQueue: size must be at least 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries with ``keys`` (N, dim); with N > size only the last
        ``size`` keys are kept."""
        size = self.keys.shape[0]
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"MemoryQueue.push: keys must be (N, {self.keys.shape[1]}), got {tuple(keys.shape)}"
            )
        ptr = int(self.ptr)
        if keys.shape[0] > size:
            ptr = (ptr + keys.shape[0] - size) % size
            keys = keys[-size:]
        n = keys.shape[0]
        index = (ptr + torch.arange(n, device=keys.device)) % size  # (N,), wrapping
        self.keys[index] = keys.to(self.keys.dtype)
        self.ptr.fill_((ptr + n) % size)


class MoCo(SSLMethod):
    """batch["global"]: (B, 2, 3, H, W) -> {loss, keys}; ``keys`` (B, proj_dim) are enqueued
    by :meth:`on_step_end`, gathered from every worker first."""

    def __init__(self, backbone: nn.Module, cfg: MoCoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers, batch_norm=False
        )
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projector_momentum = momentum_copy(self.projector)
        self.momentum_schedule = (cfg.momentum, cfg.momentum)  # constant, as v1 and v2
        self.queue = MemoryQueue(cfg.queue_size, cfg.proj_dim)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.backbone_momentum),
            (self.projector, self.projector_momentum),
        ]

    def local_batchnorm_modules(self) -> list[nn.Module]:
        """The key encoder under shuffle-BN: its statistics stay per worker, over a batch
        shuffled across workers, so a query and its key are normalised with statistics of
        different sub-batches (§3.3); statistics over the global batch would undo the shuffle."""
        return [self.backbone_momentum, self.projector_momentum] if self.cfg.shuffle_bn else []

    def _encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector_momentum(self.backbone_momentum(x))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Momentum keys of x: (N, 3, H, W) -> (N, proj_dim), L2-normalised, with shuffle-BN
        across workers when distributed."""
        if not (self.cfg.shuffle_bn and distributed.is_distributed()):
            return F.normalize(self._encode_keys(x), dim=1)
        world, rank, n = distributed.world_size(), distributed.rank(), x.shape[0]
        x_all = distributed.gather_no_grad(x.contiguous())  # (W*N, 3, H, W), rank order
        # one permutation shared by all workers: each draws one, rank 0's is the one used
        perm = distributed.gather_no_grad(torch.randperm(world * n, device=x.device))
        perm = perm[: world * n]
        mine = perm.view(world, n)[rank]  # rows of x_all this worker encodes
        k_all = distributed.gather_no_grad(self._encode_keys(x_all[mine]))  # (W*N, D)
        unshuffled = torch.empty_like(k_all)
        unshuffled[perm] = k_all  # k_all[j] is the key of x_all[perm[j]]
        return F.normalize(unshuffled.view(world, n, -1)[rank], dim=1)  # (N, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = view_group(batch, "global", "MoCo", count=2)
        q = self.projector(self.backbone(views[:, 0]))  # (B, D)
        k = self.keys(views[:, 1])  # (B, D), no gradient
        loss = info_nce_loss(q, k, self.queue.keys, self.cfg.temperature)
        return {"loss": loss, "keys": k}

    @torch.no_grad()
    def on_step_end(self, outputs: dict[str, torch.Tensor], progress: Progress) -> None:
        super().on_step_end(outputs, progress)  # the key encoder's EMA
        # every worker enqueues the keys of the whole global batch, so queues stay identical
        self.queue.push(distributed.gather_no_grad(outputs["keys"].detach()))
