"""Clustering losses: SwAV's swapped prediction with Sinkhorn-Knopp codes.

SwAV, Caron et al. 2020, arXiv:2006.09882; reference code ``facebookresearch/swav``,
``main_swav.py`` (``distributed_sinkhorn`` and the loss inside ``train``).
"""

import math

import torch
import torch.nn.functional as F

from ssl_models import distributed


def _global_logsumexp(x: torch.Tensor, dim: int, everywhere: bool) -> torch.Tensor:
    """logsumexp of ``x`` along ``dim`` (keepdim), over all workers' rows when ``everywhere``.

    Each worker gathers the others' partial results and reduces them in rank order, so every
    worker holds the same value.
    """
    lse = torch.logsumexp(x, dim=dim, keepdim=True)
    if everywhere:
        lse = torch.logsumexp(distributed.gather_no_grad(lse.unsqueeze(0)), dim=0)
    return lse


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Soft codes by the Sinkhorn-Knopp algorithm (SwAV, Caron et al. 2020, arXiv:2006.09882).

    scores: (N, K) similarities of N samples to K prototypes. Returns codes (N, K) with no
    gradient, as the reference's ``distributed_sinkhorn``: Q = exp(scores / ε) scaled to sum 1,
    then ``iterations`` rounds of "each prototype carries 1/K" followed by "each sample carries
    1/N", finally multiplied by N. Every code row therefore sums to 1 (an assignment) and the
    prototypes share the batch nearly equally (about N/K samples each).

    With ``gather_distributed`` the N samples are those of every worker together (the
    reference all-reduces the same sums; codes carry no gradient, so that is exact): every row
    sum and the total are reduced over workers, and N counts every worker's rows.

    Computed in float32 in the log domain: the same numbers as the reference's
    ``exp(scores / ε)`` without its overflow for large scores or small ε.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn: expected scores (N, K), got {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(
            f"sinkhorn: epsilon must be > 0 and iterations >= 1, got {epsilon} and {iterations}"
        )
    everywhere = gather_distributed and distributed.is_distributed()
    rows = torch.tensor([float(scores.shape[0])], device=scores.device)
    if everywhere:
        rows = distributed.gather_no_grad(rows).sum()
    n_total, k = int(rows.item()), scores.shape[1]
    if n_total < 2:
        raise ValueError(
            f"sinkhorn: needs at least 2 samples to share among prototypes, got {n_total}"
        )

    log_q = scores.detach().float().T / epsilon  # (K, N), the reference's orientation
    log_q = log_q - _global_logsumexp(log_q.reshape(1, -1), 1, everywhere)  # total 1
    log_k, log_n = math.log(k), math.log(n_total)
    for _ in range(iterations):
        # each prototype (row) carries a total weight of 1/K
        log_q = log_q - _global_logsumexp(log_q, 1, everywhere) - log_k
        # each sample (column) carries a total weight of 1/N
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_n
    return torch.exp(log_q + log_n).T  # columns sum to 1: an assignment per sample


def swav_loss(
    scores: list[torch.Tensor],
    n_assign: int = 2,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: list[torch.Tensor] | None = None,
    gather_distributed: bool = False,
    hard: bool = False,
) -> torch.Tensor:
    """Swapped prediction (SwAV, Caron et al. 2020, arXiv:2006.09882), as ``main_swav.py``.

    scores: one (N, K) tensor per crop (global crops first), each the cosine similarity of the
    crop's normalised embedding to the normalised prototypes. The first ``n_assign`` crops get
    codes q = sinkhorn(scores) (no gradient); every other crop predicts them:
    ``-mean_n sum_k q log softmax(scores_v / T)``, summed over the other crops and divided by
    their number (n_crops - 1), then averaged over the ``n_assign`` coded crops.

    queue_scores: optional, one (L, K) tensor per coded crop: past embeddings scored against the
    current prototypes. They join the Sinkhorn batch (more samples to share the prototypes
    among) but get no loss. The queue is the same on every worker; with ``gather_distributed``
    each worker passes its 1/W share of it to Sinkhorn, so the union is the queue once, as the
    reference's per-worker queues.

    gather_distributed: Sinkhorn on the global batch (see :func:`sinkhorn`); the prediction term
    stays local, and DDP's gradient average over equal local batches makes it the global mean.

    hard: each code replaced by the one-hot of its largest entry (the paper's discrete codes,
    section 3.1, which it found worse than soft ones; the reference README lists them as a
    workaround for a collapse at ln K).
    """
    if not isinstance(scores, list | tuple) or len(scores) < 2:
        raise ValueError("swav_loss: expected a list of at least 2 per-crop (N, K) score tensors")
    if not 1 <= n_assign <= len(scores):
        raise ValueError(f"swav_loss: n_assign={n_assign} must be in [1, {len(scores)}]")
    shape = scores[0].shape
    for v, s in enumerate(scores):
        if s.ndim != 2 or s.shape != shape:
            raise ValueError(
                f"swav_loss: crop {v} scores have shape {tuple(s.shape)}, expected (N, K) = "
                f"{tuple(shape)} like crop 0"
            )
    if queue_scores is not None and len(queue_scores) != n_assign:
        raise ValueError(
            f"swav_loss: expected {n_assign} queue score tensors, got {len(queue_scores)}"
        )
    n = shape[0]
    everywhere = gather_distributed and distributed.is_distributed()

    total = scores[0].new_zeros((), dtype=torch.float32)
    for i in range(n_assign):
        with torch.no_grad():
            out = scores[i].detach()
            if queue_scores is not None:
                queued = queue_scores[i].detach()
                if queued.ndim != 2 or queued.shape[1] != shape[1]:
                    raise ValueError(
                        f"swav_loss: queue scores {i} have shape {tuple(queued.shape)}, "
                        f"expected (L, {shape[1]})"
                    )
                if everywhere:
                    queued = torch.tensor_split(queued, distributed.world_size())[
                        distributed.rank()
                    ]
                out = torch.cat([queued.to(out.dtype), out])
            q = sinkhorn(out, epsilon, iterations, gather_distributed)[-n:]  # (N, K)
            if hard:
                q = F.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
        subloss = scores[0].new_zeros((), dtype=torch.float32)
        for v, s in enumerate(scores):
            if v == i:
                continue
            log_p = F.log_softmax(s.float() / temperature, dim=1)
            subloss = subloss - (q * log_p).sum(dim=1).mean()
        total = total + subloss / (len(scores) - 1)
    return total / n_assign
