"""Contrastive losses with negatives: SimCLR's NT-Xent, MoCo v1/v2's InfoNCE against a queue,
MoCo v3's in-batch InfoNCE."""

import torch
import torch.nn.functional as F

from ssl_models import distributed


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name}: expected two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )


def nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy (SimCLR, Chen et al. 2020, arXiv:2002.05709).

    z1, z2: (N, D) projections of two views of the same N images; L2-normalised here.
    Each of the 2N embeddings is an anchor; its positive is the other view of its image and its
    negatives are the remaining 2N - 2 embeddings. With ``l = -log(exp(s_pos / T) /
    sum_{k != anchor} exp(s_k / T))``, s the cosine similarity, returns the mean of l over the N
    anchors of each view, summed over the two views: twice the mean over the 2N anchors of the
    paper's Algorithm 1, as the reference computes it (google-research/simclr ``objective.py``
    ``add_contrastive_loss``: ``loss_a + loss_b``). The factor matters under LARS, where the
    gradient's scale sets weight decay's weight relative to it.

    With ``gather_distributed`` the candidates are the views of the global batch gathered with
    gradient, the anchors stay local; under DDP's gradient averaging this equals one process
    holding the global batch.
    """
    _check_pair(z1, z2, "nt_xent_loss")
    n = z1.shape[0]
    global_n = n * distributed.world_size() if gather_distributed else n
    if global_n < 2:
        raise ValueError("nt_xent_loss needs at least 2 images to have a negative")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    anchors = torch.cat([z1, z2], dim=0)  # (2N, D)
    if gather_distributed and distributed.is_distributed():
        g1, g2 = distributed.gather(z1), distributed.gather(z2)  # (W*N, D) each
        offset = distributed.rank() * n
    else:
        g1, g2, offset = z1, z2, 0
    total = g1.shape[0]
    candidates = torch.cat([g1, g2], dim=0)  # (2*W*N, D)

    logits = anchors @ candidates.T / temperature  # (2N, 2WN)
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + total])  # where each anchor sits among candidates
    positive_index = torch.cat([local + total, local])
    logits = logits.masked_fill(F.one_hot(self_index, num_classes=2 * total).bool(), float("-inf"))
    return 2 * F.cross_entropy(logits, positive_index)  # loss_a + loss_b, each a mean over N


def info_nce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE against a queue of negatives (MoCo, He et al. 2020, arXiv:1911.05722; MoCo v2,
    Chen et al. 2020, arXiv:2003.04297).

    q: (N, D) queries; k: (N, D) keys, the positive of each query; queue: (K, D) keys of past
    batches, the negatives. All three are L2-normalised here. Logits are ``[q·k, q·queueᵀ] / T``
    with the positive at index 0; returns the mean cross-entropy over the N queries. ``k`` and
    ``queue`` carry no gradient (they come from the momentum encoder; the reference computes
    them under ``no_grad``), so they are detached here. The paper's T is 0.07 (v1), 0.2 (v2).
    """
    _check_pair(q, k, "info_nce_loss")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise ValueError(
            f"info_nce_loss: queue must be (K >= 1, {q.shape[1]}) to match q {tuple(q.shape)}, got "
            f"{tuple(queue.shape)}"
        )
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    negative = q @ queue.T  # (N, K)
    logits = torch.cat([positive, negative], dim=1) / temperature  # (N, 1 + K)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def moco_v3_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.2,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """MoCo v3's contrastive loss with in-batch negatives (Chen, Xie & He 2021,
    arXiv:2104.02057; ``contrastive_loss`` in the reference ``moco/builder.py``).

    q: (N, D) predictions of one view; k: (N, D) momentum keys of the other view, the i-th key
    the positive of the i-th query and every other key a negative. Both L2-normalised here.
    Returns ``cross_entropy(q·kᵀ / T, diagonal) · 2T``, the mean over the N queries; the factor
    2T is the reference's (it makes the gradient scale independent of T). The method sums this
    over both directions (q1 with k2, q2 with k1). Gradient flows into both arguments; MoCo v3
    passes keys from its momentum encoder, which carry none. The reference's T is 1.0 for ResNets
    and 0.2 for ViTs.

    With ``gather_distributed`` the keys are those of the global batch (gathered with gradient)
    and the queries stay local, as the reference; under DDP's gradient averaging this equals one
    process holding the global batch.
    """
    _check_pair(q, k, "moco_v3_loss")
    n = q.shape[0]
    distributed_keys = gather_distributed and distributed.is_distributed()
    if n * (distributed.world_size() if distributed_keys else 1) < 2:
        raise ValueError("moco_v3_loss needs at least 2 images to have a negative")
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    offset = 0
    if distributed_keys:
        k = distributed.gather(k)  # (W*N, D)
        offset = distributed.rank() * n
    logits = q @ k.T / temperature  # (N, W*N)
    target = torch.arange(n, device=q.device) + offset
    return F.cross_entropy(logits, target) * (2 * temperature)
