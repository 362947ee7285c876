"""One optimisation step, callable without Ray or MLflow (a plain process, one GPU, or DDP).

The Ray worker loop (``loop.py``) and the GPU check (``benchmarks/gpu_check.py``) both drive
:class:`TrainStep`; it owns views-to-device, photometric augmentation, precision, gradient
accumulation, the schedules, the method's hooks, clipping and the optimizer. Nothing here (nor
anything it imports) imports ray, mlflow or yaml at module level.

Host syncs: a step leaves its loss and metrics on the device (:class:`StepResult`), so the CPU
can queue the next step while the accelerator works; the caller reads them back when it logs
(:func:`pipelines.train.reporting.to_floats`, one copy for all of them). The one read per step
is the finiteness of the loss, a single flag checked before anything moves the weights.
"""

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.config.schema import Config
from pipelines.data.stream.views import prepare_views
from pipelines.eval.monitors import OnlineProbe, probe_features
from pipelines.train.batching import plan_for
from pipelines.train.checkpoint import capture_rng, restore_rng
from pipelines.train.optim import (
    build_optimizer,
    clip_grad_per_parameter_,
    scaled_lr,
    set_lr,
    set_weight_decay,
)
from ssl_models import distributed
from ssl_models.global_bn import GlobalBatchNorm, convert_batchnorm
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.schedules import warmup_cosine

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops rather than corrupt the weights."""


def place(method: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """Move to the device, in channels-last layout when configured (only 4-D weights change)."""
    if cfg.train.channels_last:
        return method.to(device, memory_format=torch.channels_last)
    return method.to(device)


def sync_batchnorm(method: SSLMethod, cfg: Config, device: torch.device) -> SSLMethod:
    """BatchNorm over the global batch when ``train.sync_batchnorm`` is on and there are several
    workers: torch's ``nn.SyncBatchNorm`` on GPU (NCCL), :class:`GlobalBatchNorm` elsewhere (torch
    has no CPU one). Layers inside ``method.local_batchnorm_modules()`` stay per worker.
    Converted layers keep the same parameter and buffer objects, so the optimizer, momentum
    pairs and checkpoints see no change; with one worker nothing changes."""
    if not cfg.train.sync_batchnorm or not distributed.is_distributed():
        return method
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    local = method.local_batchnorm_modules()
    converted = convert_batchnorm(method, cls, local)
    if distributed.rank() == 0:
        names = {id(m): name for name, m in method.named_modules()}
        kept = ", ".join(names.get(id(m), type(m).__name__) for m in local)
        log.info(
            "train.sync_batchnorm: %d BatchNorm layers normalise over the global batch of %d "
            "workers (%s)%s",
            len(converted),
            distributed.world_size(),
            cls.__name__,
            f"; per worker: {kept}" if kept else "",
        )
    return method


def wrap_ddp(method: nn.Module, device: torch.device) -> nn.Module:
    """DDP when a process group with several workers exists, the bare module otherwise."""
    if not distributed.is_distributed():
        return method
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(method, device_ids=device_ids)


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on GPU under ``auto``; fp32 (no autocast) on CPU unless asked for."""
    if cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Micro-batches for gradient accumulation: every tensor cut into ``parts`` along dim 0."""
    sizes = {k: v.shape[0] for k, v in batch.items()}
    b = next(iter(sizes.values()))
    if any(s != b for s in sizes.values()) or b % parts:
        raise ValueError(f"a batch of {sizes} does not split into {parts} equal micro-batches")
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: c[i] for k, c in chunks.items()} for i in range(parts)]


def merge_outputs(outputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One dict for the hooks: 0-dim tensors averaged, others concatenated along dim 0 (so a
    queue receives the keys of every micro-batch)."""
    if len(outputs) == 1:
        return outputs[0]
    merged = {}
    for key, first in outputs[0].items():
        values = [o[key] for o in outputs]
        if isinstance(first, torch.Tensor) and first.ndim == 0:
            merged[key] = torch.stack([v.detach() for v in values]).mean()
        elif isinstance(first, torch.Tensor):
            merged[key] = torch.cat(values)
        else:
            merged[key] = values[-1]
    return merged


@dataclass
class StepResult:
    """One optimizer step's numbers, still on the device: reading one waits for the step to
    finish, so read them on logging steps only
    (:func:`pipelines.train.reporting.to_floats`)."""

    loss: torch.Tensor  # 0-dim float32: the mean over the micro-batches
    metrics: dict[str, torch.Tensor | float]  # "loss" included; the schedules' values are floats


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming ``step`` when ``loss`` (0-dim, the mean over
    the micro-batches, so non-finite when any of them is) is NaN or infinite. The step's one
    host sync, a single flag: it runs before the hooks, clipping and the optimizer, so a
    non-finite loss never reaches the weights, the optimizer state or an EMA teacher."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(f"loss is {float(loss)} at step {step}")


class TrainStep:
    """Owns the optimizer and schedules of one worker; call it once per optimizer step with the
    worker's whole batch, cut into ``accumulate_steps`` micro-batches (default: the
    :mod:`pipelines.train.batching` plan at this process group's size)."""

    def __init__(
        self,
        method: SSLMethod,
        cfg: Config,
        device: torch.device,
        total_steps: int,
        steps_per_epoch: int,
        num_classes: int = 0,
        accumulate_steps: int | None = None,
    ) -> None:
        self.cfg = cfg
        if accumulate_steps is None:
            accumulate_steps = plan_for(cfg.train, distributed.world_size()).accumulate
        self.accumulate_steps = accumulate_steps
        self.device = device
        self.method = sync_batchnorm(method, cfg, device)
        self.model = wrap_ddp(self.method, device)
        self.optimizer = build_optimizer(self.method, cfg.optim, cfg.train.batch_size)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.peak_lr = scaled_lr(cfg.optim, cfg.train.batch_size)
        self.warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
        self.dtype = autocast_dtype(cfg, device)
        seed = cfg.train.seed * 1000 + distributed.rank()
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.probe = None
        if cfg.eval.online_probe and num_classes > 1:
            dim = self.method.encoder.out_dim
            self.probe = OnlineProbe(dim, num_classes, cfg.eval.probe_lr, device)

    def progress(self, step: int) -> Progress:
        return Progress(step, self.total_steps, self.steps_per_epoch)

    def schedules(self, step: int) -> dict[str, float]:
        """Set this step's lr (and weight decay when scheduled) on the optimizer."""
        o = self.cfg.optim
        lr = warmup_cosine(
            step, self.total_steps, self.warmup_steps, self.peak_lr, self.peak_lr * o.final_lr_ratio
        )
        set_lr(self.optimizer, lr)
        out = {"lr": lr}
        if o.weight_decay_end >= 0:
            out["weight_decay"] = set_weight_decay(
                self.optimizer, step, self.total_steps, o.weight_decay, o.weight_decay_end
            )
        return out

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def __call__(
        self, batch: dict[str, torch.Tensor], step: int, labels: torch.Tensor | None = None
    ) -> StepResult:
        progress = self.progress(step)
        metrics = self.schedules(step)
        metrics.update(self.method.on_step_start(progress))
        parts = self.accumulate_steps
        micro = split_batch(batch, parts)

        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, outputs, probe_feats = [], [], []
        for i, part in enumerate(micro):
            views = prepare_views(part, self.cfg.views, self.device, self.generator)
            # DDP all-reduces gradients once per optimizer step: after the last micro-batch
            accumulate = i < parts - 1 and self.model is not self.method
            with self.model.no_sync() if accumulate else contextlib.nullcontext():
                with self._autocast():
                    out = self.model(views)
                loss = out["loss"]
                (loss / parts).backward()
            losses.append(loss.detach().float())  # kept on the device: no read per micro-batch
            outputs.append(out)
            if self.probe is not None and labels is not None:
                feats = out.get("features")
                if feats is None:
                    first = views[next(iter(self.cfg.views.groups))]
                    with self._autocast():
                        feats = probe_features(self.method.encoder, first)
                probe_feats.append(feats.detach())
        loss = torch.stack(losses).mean()
        check_finite(loss, step)

        self.method.on_after_backward(progress)
        if self.cfg.optim.clip_grad > 0:
            if self.cfg.optim.clip_grad_per_parameter:
                norm = clip_grad_per_parameter_(self.method.parameters(), self.cfg.optim.clip_grad)
            else:
                norm = nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad)
            metrics["grad_norm"] = norm
        self.optimizer.step()
        merged = merge_outputs(outputs)
        self.method.on_step_end(merged, progress)

        if probe_feats and labels is not None:
            metrics.update(self.probe.step(torch.cat(probe_feats), labels.to(self.device)))
        for key, value in merged.items():
            if key != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                metrics[key] = value.detach()
        metrics["loss"] = loss
        return StepResult(loss, metrics)

    def state_dict(self) -> dict:
        """Model, optimizer, probe and this rank's random state (see checkpoint.py)."""
        state = {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng(self.generator),
        }
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
        return state

    def load_state_dict(self, state: dict, rng: dict | None = None) -> None:
        """Restore a :meth:`state_dict`; ``rng`` is this rank's entry (the default: the state's
        own ``rng`` when it is one rank's dict)."""
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.probe is not None and "probe" in state:
            self.probe.load_state_dict(state["probe"])
        rng = rng if rng is not None else state.get("rng")
        if isinstance(rng, dict) and rng:  # a list is every rank's: the caller picks its own
            restore_rng(rng, self.generator)
