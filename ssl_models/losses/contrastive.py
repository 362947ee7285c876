"""Contrastive losses with negatives: SimCLR's NT-Xent."""

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
    negatives are the remaining 2N - 2 embeddings. Returns the mean over the 2N anchors of
    ``-log(exp(s_pos / T) / sum_{k != anchor} exp(s_k / T))`` with s the cosine similarity.

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
    return F.cross_entropy(logits, positive_index)
