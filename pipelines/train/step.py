"""One optimisation step, callable without Ray or MLflow (a plain process, one GPU, or DDP).

The Ray worker loop (``loop.py``) and the GPU check (``benchmarks/gpu_check.sh``) both drive
:class:`TrainStep`; it owns views-to-device, photometric augmentation, precision, the schedules,
the method's hooks and the optimizer.
"""

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.config import Config
from pipelines.data.views import augment_views
from pipelines.train.backbone import backbone_from_config
from pipelines.train.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from ssl_models import distributed
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.registry import get_method


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops rather than corrupt the weights."""


def build_method(cfg: Config) -> SSLMethod:
    backbone = backbone_from_config(cfg)
    return get_method(cfg.method).cls(backbone, cfg.method_args)


def place(method: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """Move to the device, in channels-last layout when configured (only 4-D weights change)."""
    if cfg.train.channels_last:
        return method.to(device, memory_format=torch.channels_last)
    return method.to(device)


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


def prepare_views(
    batch: dict[str, torch.Tensor],
    cfg: Config,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """uint8 views -> normalised float views on ``device``, augmented here when
    ``views.augment_device`` is ``train``. Other keys pass through, moved to ``device``."""
    mean = torch.tensor(cfg.views.mean, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.views.std, device=device).view(1, 1, 3, 1, 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        group = cfg.views.groups.get(key)
        if group is not None:
            if value.dtype != torch.uint8 or value.ndim != 5:
                raise ValueError(
                    f"views '{key}' must be uint8 (B, V, 3, H, W), got {value.dtype} "
                    f"{tuple(value.shape)}"
                )
            x = value.float().div_(255)
            if cfg.views.augment_device == "train":
                x = augment_views(x, group, generator)
            value = (x - mean) / std
        out[key] = value
    return out


@dataclass
class StepResult:
    loss: float
    metrics: dict[str, float]


class TrainStep:
    """Owns the optimizer and schedules of one worker; call it once per batch."""

    def __init__(
        self,
        method: SSLMethod,
        cfg: Config,
        device: torch.device,
        total_steps: int,
        steps_per_epoch: int,
    ) -> None:
        self.method = method
        self.cfg = cfg
        self.device = device
        self.model = wrap_ddp(method, device)
        self.optimizer = build_optimizer(method, cfg.optim, cfg.train.batch_size)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.peak_lr = scaled_lr(cfg.optim, cfg.train.batch_size)
        self.warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
        self.dtype = autocast_dtype(cfg, device)
        seed = cfg.train.seed * 1000 + distributed.rank()
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def progress(self, step: int) -> Progress:
        return Progress(step, self.total_steps, self.steps_per_epoch)

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> StepResult:
        progress = self.progress(step)
        lr = warmup_cosine(
            step,
            self.total_steps,
            self.warmup_steps,
            self.peak_lr,
            self.peak_lr * self.cfg.optim.final_lr_ratio,
        )
        set_lr(self.optimizer, lr)
        metrics = {"lr": lr, **self.method.on_step_start(progress)}
        views = prepare_views(batch, self.cfg, self.device, self.generator)

        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        self.method.train()
        with autocast:
            outputs = self.model(views)
        loss = outputs["loss"]
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at step {step}")

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.on_after_backward(progress)
        if self.cfg.optim.clip_grad > 0:
            norm = nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        self.method.on_step_end(outputs, progress)

        for key, value in outputs.items():
            if key != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                metrics[key] = float(value.detach())
        metrics["loss"] = loss_value
        return StepResult(loss_value, metrics)

    def state_dict(self) -> dict:
        return {"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Throughput:
    """Images per second and the fraction of wall time spent waiting for data."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.wait = 0.0
        self.images = 0

    def summary(self) -> dict[str, float]:
        elapsed = max(1e-9, time.perf_counter() - self.start)
        return {"images_per_sec": self.images / elapsed, "data_wait_fraction": self.wait / elapsed}
