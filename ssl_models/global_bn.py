"""BatchNorm over the global batch on any device: the "global BN" of SimCLR (Chen et al. 2020,
arXiv:2002.05709, §2.3), BYOL's cross-replica BN and the SyncBatchNorm of the MoCo v3, SwAV,
Barlow Twins, VICReg, SimSiam and DINO reference code.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors, also under gloo; :class:`GlobalBatchNorm`
computes the same statistics with one all-gather of every worker's per-channel (mean, sum of
squared deviations, count), combined as Chan et al.'s parallel variance, so a worker holding
part of the batch normalises, and updates its running statistics, exactly as one process
holding the whole batch. The gather keeps the gradient (:func:`ssl_models.distributed.gather`),
so the backward pass carries every worker's share of d loss / d statistics back to each input.

Outside training, or in one process, it is a plain BatchNorm: no collective is called.
"""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_models import distributed

#: the BatchNorm classes :func:`convert_batchnorm` replaces
PLAIN_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean, biased variance and sample count of ``x`` over every worker's batch.

    x: (N, C, ...) on each worker, N may differ between workers -> mean (C,), var (C,) in
    float32, count () the number of values per channel summed over workers. Each worker
    contributes its own mean and sum of squared deviations M2; with n = Σ n_r and
    μ = Σ n_r μ_r / n the whole batch has M2 = Σ M2_r + Σ n_r (μ_r − μ)², free of the
    cancellation in E[x²] − E[x]² (Chan, Golub & LeVeque 1979).
    """
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = (1, c) + (1,) * (x.dim() - 2)
    xf = x.float()
    n = xf.numel() // max(c, 1)  # values per channel on this worker
    mean = xf.sum(dims) / max(n, 1)  # (C,); an empty share contributes nothing
    m2 = (xf - mean.view(shape)).square().sum(dims)  # (C,)
    stats = torch.cat([mean, m2, mean.new_full((1,), float(n))]).unsqueeze(0)  # (1, 2C + 1)
    every = distributed.gather(stats)  # (W, 2C + 1), rank order, with gradient
    means, m2s = every[:, :c], every[:, c : 2 * c]  # (W, C) each
    counts = every[:, 2 * c :].detach()  # (W, 1), constants
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total
    global_m2 = m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)
    return global_mean, global_m2 / total, total


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch of every worker.

    x: (N, C) or (N, C, ...) -> same shape and dtype. Parameters, buffers and state-dict keys
    are those of ``nn.BatchNorm{1,2,3}d``; running statistics use the unbiased variance of the
    global batch and the module's momentum (``None``: cumulative average), as torch does.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)  # eval or one process: nothing to share
        self._check_input_dim(x)
        mean, var, count = global_moments(x)
        total = float(count)  # a host read: this class serves CPU workers (GPUs: SyncBatchNorm)
        if total <= 1:
            raise ValueError(
                f"GlobalBatchNorm: expected more than 1 value per channel when training, got "
                f"input {tuple(x.shape)} on this worker and {int(total)} in all"
            )
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """``running ← (1 − f)·running + f·batch`` with the unbiased variance, f the momentum
        or, when it is None, 1 / (batches seen) — ``nn.BatchNorm``'s rule."""
        self.num_batches_tracked.add_(1)
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1))
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)


def _replacement(bn: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """A ``cls`` layer sharing ``bn``'s parameter and buffer objects (optimizers, momentum
    pairs and checkpoints see no change)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def convert_batchnorm(
    module: nn.Module, cls: type[_BatchNorm], keep: list[nn.Module] | tuple[nn.Module, ...] = ()
) -> list[str]:
    """Replace, in place, every plain BatchNorm under ``module`` by ``cls``
    (:class:`GlobalBatchNorm` or ``nn.SyncBatchNorm``), except inside the modules of ``keep``
    (MoCo's key encoder). Returns the dotted names of the replaced layers; ``module`` itself is
    never replaced."""
    kept = {id(m) for m in keep}
    converted: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            if id(child) in kept:
                continue
            if isinstance(child, PLAIN_BATCHNORM):
                setattr(parent, name, _replacement(child, cls))
                converted.append(prefix + name)
            else:
                visit(child, f"{prefix}{name}.")

    visit(module, "")
    return converted
