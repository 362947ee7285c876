"""Opt-in collectives that are no-ops in a single process.

Every helper here is guarded by ``dist.is_initialized()`` so the models and losses run unchanged in
one CPU process, under DDP over gloo, or under NCCL.
"""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every worker along dim 0, keeping the gradient.

    The backward pass sums the gradients of every worker's copy (a reduce-scatter), which is what
    makes a loss over the gathered batch, averaged by DDP, equal to the loss of one process holding
    the whole batch. A plain ``all_gather`` would cut the graph; an ``all_reduce`` inside a loss
    would scale the gradient by 1/world_size.

    x: (B, ...) on each worker -> (world_size * B, ...), rank order.
    """
    if not is_distributed():
        return x
    return _Gather.apply(x)


class _Gather(torch.autograd.Function):
    """All-gather whose backward sums every worker's gradient for this worker's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather` for tensors that carry no gradient (momentum keys, teacher outputs)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over workers, for statistics that carry no gradient (the DINO centre)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
