"""Scoring encoders on a run's own bank and queries (kNN, linear probe), and the random-init
baselines ``benchmarks/method_quality.py`` sets each trained encoder against: the configured
backbone at random init, and for a ViT whose recipe weakens its init, the same ViT with the
plain init."""

import dataclasses

import torch

from pipelines.config.schema import Config


def random_init_encoders(cfg: Config, seeds: int) -> dict[str, torch.nn.Module]:
    """The configured backbone at random initialisation, seeded ``train.seed + i`` for i <
    ``seeds``, keyed ``seed<i>``. Every method builds its backbone first (``build_method``), so
    ``seed0`` holds the weights the run started from (``eval.knn_random_init``'s encoder)."""
    from pipelines.eval.encoders import eval_image_size
    from pipelines.train.model import backbone_from_config
    from ssl_models.export import Encoder

    size = eval_image_size(cfg)
    encoders = {}
    for i in range(seeds):
        torch.manual_seed(cfg.train.seed + i)
        backbone = backbone_from_config(cfg)
        encoders[f"seed{i}"] = Encoder(backbone, cfg.views.mean, cfg.views.std, size)
    return encoders


def run_data_scores(
    cfg: Config, encoders: dict[str, torch.nn.Module], linear: bool = False
) -> dict[str, dict[str, float]]:
    """Each encoder's kNN (and with ``linear`` linear-probe) top-1 on the run's own bank and
    queries, scored as the run scores itself: ``evaluate_encoders`` with its ``eval.*``."""
    from pipelines.eval.frozen import evaluate_encoders
    from pipelines.train.trainer import resolve_data

    split, _ = resolve_data(cfg)
    res = cfg.data.task_resources
    return evaluate_encoders(encoders, split, cfg.eval, linear=linear, resources=res).top1


def random_init_knn(cfg: Config, seeds: int) -> list[float]:
    """kNN top-1 of :func:`random_init_encoders` on the run's own bank and queries."""
    from pipelines.eval.frozen import KNN

    top1 = run_data_scores(cfg, random_init_encoders(cfg, seeds))
    return [round(top1[f"seed{i}"][KNN], 4) for i in range(seeds)]


def plain_vit(cfg: Config) -> Config | None:
    """The same ViT with the plain init: Xavier weights (MAE's) and no layer scale; None for a
    backbone that is not a ViT or already has it.

    Layer scale (BEiT/SimMIM/CAE 0.1, DINOv2 1e-5) multiplies every residual branch at
    initialisation, so the random ViT's tokens are nearly the patch embedding plus position (its
    [CLS] nearly input-independent). BEiT's and SimMIM's truncated-normal init (std 0.02) leaves
    the random blocks nearly the identity as well (``benchmarks/vit_init_probe.py``). Either
    makes a weaker baseline than the same blocks with the plain init; scoring both keeps a margin
    from being the baseline's weakness."""
    vit = cfg.backbone.vit
    if not cfg.backbone.name.startswith("vit") or (vit.layer_scale <= 0 and vit.init == "xavier"):
        return None
    vit = dataclasses.replace(vit, layer_scale=0.0, init="xavier")
    return dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, vit=vit))


def plain_changes(cfg: Config) -> str:
    """What :func:`plain_vit` changes, e.g. ``layer scale 0.1 → 0, init beit → xavier``."""
    vit, parts = cfg.backbone.vit, []
    if vit.layer_scale > 0:
        parts.append(f"layer scale {vit.layer_scale:g} → 0")
    if vit.init != "xavier":
        parts.append(f"init {vit.init} → xavier")
    return ", ".join(parts)


def random_init_knn_plain(cfg: Config) -> float | None:
    """Seed ``train.seed``'s random-init kNN of :func:`plain_vit`, or None."""
    plain = plain_vit(cfg)
    return None if plain is None else random_init_knn(plain, 1)[0]
