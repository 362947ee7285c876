"""Tiny methods and batches for the method tests: a width-0.125 ResNet-18 with a CIFAR stem,
heads of a few dozen units, 16-pixel views."""

from collections.abc import Callable

import torch

from ssl_models.backbones import build_backbone
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.byol import BYOL, BYOLConfig
from ssl_models.methods.dino import DINO, DINOConfig
from ssl_models.methods.moco import MoCo, MoCoConfig
from ssl_models.methods.moco_v3 import MoCoV3, MoCoV3Config
from ssl_models.methods.simclr import SimCLR, SimCLRConfig
from ssl_models.methods.simsiam import SimSiam, SimSiamConfig

TINY = {
    "simclr_v2": (
        SimCLR,
        SimCLRConfig(
            temperature=0.2,
            proj_hidden_dim=32,
            proj_dim=16,
            proj_layers=3,
            proj_last_batch_norm=True,
        ),
    ),
    "moco_v1": (MoCo, MoCoConfig(temperature=0.07, proj_layers=1, proj_dim=16, queue_size=64)),
    "moco_v2": (MoCo, MoCoConfig(proj_hidden_dim=32, proj_dim=16, queue_size=64)),
    "moco_v3": (
        MoCoV3,
        MoCoV3Config(temperature=0.2, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32),
    ),
    "byol": (BYOL, BYOLConfig(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)),
    "simsiam": (
        SimSiam,
        SimSiamConfig(proj_hidden_dim=32, proj_dim=32, proj_layers=2, pred_hidden_dim=8),
    ),
    "dino": (DINO, DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16)),
}


def tiny_backbone() -> torch.nn.Module:
    return build_backbone("resnet18", width=0.125, cifar_stem=True)


def tiny_method(key: str, seed: int = 0, **overrides) -> SSLMethod:
    import dataclasses

    cls, cfg = TINY[key]
    torch.manual_seed(seed)
    return cls(tiny_backbone(), dataclasses.replace(cfg, **overrides))


def tiny_batch(n: int = 8, seed: int = 0, local: int = 2) -> dict[str, torch.Tensor]:
    """Two global views per image (the image plus noise) and ``local`` 8-pixel local views."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 3, 16, 16, generator=g)
    batch = {"global": images + 0.3 * torch.randn(n, 2, 3, 16, 16, generator=g)}
    if local:
        small = torch.nn.functional.avg_pool2d(images[:, 0], 2).unsqueeze(1)  # (n, 1, 3, 8, 8)
        batch["local"] = small + 0.3 * torch.randn(n, local, 3, 8, 8, generator=g)
    return batch


def train(
    method: SSLMethod,
    batch: dict[str, torch.Tensor],
    steps: int,
    lr: float = 0.05,
    steps_per_epoch: int = 5,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Run the training step's hook sequence with plain SGD; return the losses."""
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    method.train()
    losses = []
    for step in range(steps):
        progress = Progress(step, steps, steps_per_epoch)
        method.on_step_start(progress)
        out = method(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        method.on_after_backward(progress)
        opt.step()
        method.on_step_end(out, progress)
        if after_step is not None:
            after_step()
        losses.append(out["loss"].item())
    return losses


def assert_backbone_grads_differ_by(
    plain: SSLMethod, changed: SSLMethod, term: torch.Tensor, atol: float = 1e-5
) -> None:
    """After ``backward`` on both losses: the backbone gradients of ``changed`` (the same weights
    as ``plain`` plus an added loss term) differ from ``plain``'s by exactly ``term``'s gradient,
    and that gradient is not zero."""
    expected = torch.autograd.grad(term, list(changed.backbone.parameters()))
    pairs = zip(plain.backbone.parameters(), changed.backbone.parameters(), expected, strict=True)
    for p, q, g in pairs:
        torch.testing.assert_close(q.grad - p.grad, g, atol=atol, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in expected)


# (online module, momentum copy) pairs of each method with a momentum network
MOMENTUM_PAIRS = {
    "moco_v1": [("backbone", "backbone_momentum"), ("projector", "projector_momentum")],
    "moco_v2": [("backbone", "backbone_momentum"), ("projector", "projector_momentum")],
    "moco_v3": [("backbone", "backbone_momentum"), ("projector", "projector_momentum")],
    "byol": [("backbone", "backbone_target"), ("projector", "projector_target")],
    "dino": [("backbone", "teacher_backbone"), ("head", "teacher_head")],
}
