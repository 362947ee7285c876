"""End-to-end fine-tuning of run checkpoints' encoders against the same ViT at random init.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.finetune_probe \\
        --checkpoint simmim=RUN/checkpoint_000001248 --checkpoint mae=RUN2/checkpoint_000000312 \\
        --baselines --epochs 20 [--seeds 2] [--layer-decay 0.75] [--lock /tmp/sslpipe-heavy.lock]

The kNN and the linear probe read an encoder's frozen features. Masked image modeling papers
(SimMIM, MAE, BEiT) report fine-tuning instead: every weight trains on the labels, starting
from the pretrained ones, and the question is whether that start beats a random one under the
same recipe. This probe answers it on the first checkpoint's run data (give it runs on the
same data): the bank (the training rows of ``method_quality``'s CIFAR-10 subset) is the
training set, the kNN queries are the test set, both whole images (no evaluation crop). Each
encoder is the exported one of ``checkpoint_methods`` (an EMA teacher's where the method has
one) with a linear head on its pooled feature, trained for ``--epochs`` with one recipe for
all: AdamW (weight decay 0.05, none on biases, norms and embeddings), linear warmup then
cosine, label smoothing 0.1, stochastic depth ``--drop-path``, a random 4-pixel-padded crop and
a horizontal flip per image, and ``--layer-decay`` (MAE's layer-wise lr decay; 1 = none, the
fair setting for a random start).

``--baselines`` adds the first checkpoint's architecture at random init: the initialisation
the run started from (seed ``train.seed``) and, for a ViT whose recipe weakens its init, the
plain init (Xavier, no layer scale; ``benchmarks.baselines.plain_vit``). Each row prints the
test top-1 after every ``--report-every`` epochs and at the end, as ``finetune: {...}``.
No Ray: the images are decoded in this process.
"""

import argparse
import dataclasses
import functools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.method_quality import locked
from pipelines.config import Config
from ssl_models.schedules import warmup_cosine


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    layer_decay: float = 1.0
    pad: int = 4  # pixels of reflection padding before the random crop


class Classifier(nn.Module):
    """Normalisation, the encoder, and a linear head on its pooled feature."""

    def __init__(self, encoder: nn.Module, out_dim: int, classes: int, mean, std) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(out_dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1] -> (B, classes) logits."""
        return self.head(self.encoder((x - self.mean) / self.std))


def layer_id(name: str, depth: int) -> int:
    """MAE's layer numbering: embeddings 0, block i i + 1, the final norm and the head depth + 1;
    a shared relative position bias with the last (SimMIM's ``get_vit_layer``)."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("encoder.") and not name.startswith(("encoder.norm", "encoder.rel_pos")):
        return 0
    return depth + 1


def param_groups(model: Classifier, recipe: Recipe) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (biases, norms) and the CLS token and
    position embedding; lr scaled by ``layer_decay ** (depth + 1 - layer)`` (ViT only)."""
    blocks = getattr(model.encoder, "blocks", None)
    if blocks is None and recipe.layer_decay != 1.0:
        raise ValueError("--layer-decay needs a ViT encoder (one with .blocks)")
    depth = len(blocks) if blocks is not None else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(("cls_token", "pos_embed", "mask_token"))
        layer = layer_id(name, depth) if blocks is not None else depth + 1
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else recipe.weight_decay,
                "lr_scale": recipe.layer_decay ** (depth + 1 - layer),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [0, 1]: a random crop of the reflection-padded image and a
    horizontal flip with probability 1/2, drawn per image from ``gen``."""
    b, _, s, _ = x.shape
    x = x.float().div_(255)
    if pad:
        x = F.pad(x, (pad,) * 4, mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    flip = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = torch.stack([x[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(y), batch):
        hits += int((model(x[i : i + batch].float().div(255)).argmax(1) == y[i : i + batch]).sum())
    return hits / len(y)


def finetune(
    model: Classifier,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    recipe: Recipe,
    seed: int = 0,
    report_every: int = 0,
    label: str = "",
) -> dict:
    """Train every weight of ``model`` on (train_x, train_y); top-1 on (test_x, test_y)."""
    train_x, train_y, test_x, test_y = data
    if len(train_y) < recipe.batch_size:
        raise ValueError(f"{len(train_y)} training images, fewer than one batch")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # drop path
    opt = torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr)
    steps_per_epoch = len(train_y) // recipe.batch_size  # the last partial batch is dropped
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    step, started, history = 0, time.time(), []
    for epoch in range(recipe.epochs):
        model.train()
        order, losses = torch.randperm(len(train_y), generator=gen), []
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            lr = warmup_cosine(step, total, warmup, recipe.lr, 0.0)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            logits = model(augment(train_x[idx], recipe.pad, gen))
            loss = F.cross_entropy(logits, train_y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        last = epoch + 1 == recipe.epochs
        if last or (report_every and (epoch + 1) % report_every == 0):
            acc = top1(model, test_x, test_y)
            history.append((epoch + 1, round(acc, 4)))
            print(
                f"{label} epoch {epoch + 1}: train loss {np.mean(losses):.4f}, test top-1 "
                f"{acc:.4f} [{time.time() - started:.0f} s]",
                flush=True,
            )
    return {
        "top1": history[-1][1],
        "train_loss": round(float(np.mean(losses)), 4),
        "history": history,
        "seconds": round(time.time() - started, 1),
    }


def run_images(cfg: Config) -> tuple[tuple[torch.Tensor, ...], int]:
    """The run's bank (training rows) and queries as whole uint8 images with labels, decoded in
    this process: ``((train_x, train_y, test_x, test_y), classes)``."""
    from benchmarks.baselines import run_split
    from pipelines.encoders import eval_image_size
    from pipelines.eval_sets import split_views

    split, classes = run_split(cfg)
    size = eval_image_size(cfg)
    sides = split_views(split, size, 1.0, in_process_rows=10**12)
    out: list[torch.Tensor] = []
    for ds in sides:
        images, labels = [], []
        for batch in ds.iter_batches(batch_size=1024):
            images.append(torch.from_numpy(np.array(batch["image"])))
            labels.append(torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)))
        out += [torch.cat(images), torch.cat(labels)]
    return tuple(out), classes


def with_drop_path(cfg: Config, rate: float) -> Config:
    """The config with stochastic depth ``rate`` (a ViT's; other backbones unchanged)."""
    if not cfg.backbone.name.startswith("vit"):
        return cfg
    vit = dataclasses.replace(cfg.backbone.vit, drop_path=rate)
    return dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, vit=vit))


def fresh_encoder(cfg: Config, weights: dict | None = None) -> nn.Module:
    """The exported encoder of the method ``cfg`` builds with seed ``train.seed`` (the weights
    its run started from), or loaded with a checkpoint's method ``weights``."""
    from pipelines.train.step import build_method

    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    if weights is not None:
        method.load_state_dict(weights)
    return method.encoder


def encoders(
    checkpoints: list[tuple[str, str]], baselines: bool, drop_path: float
) -> tuple[Config, dict[str, functools.partial]]:
    """{label: builder of a fresh encoder} (each seed starts from the same weights), and the
    first checkpoint's config."""
    from benchmarks.baselines import plain_vit
    from pipelines.config import build_config
    from pipelines.train.checkpoint import load_state

    builders, first = {}, None
    for label, path in checkpoints:
        state = load_state(path)
        cfg = with_drop_path(build_config(state["config"]), drop_path)
        first = first or cfg
        builders[label] = functools.partial(fresh_encoder, cfg, state["model"])
    if baselines:
        builders["initialisation"] = functools.partial(fresh_encoder, first)
        plain = plain_vit(first)
        if plain is not None:
            builders["plain initialisation"] = functools.partial(fresh_encoder, plain)
    return first, builders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a run checkpoint directory to fine-tune (repeatable)",
    )
    ap.add_argument("--baselines", action="store_true", help="also the random-init encoders")
    ap.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per encoder")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … + seeds - 1")
    ap.add_argument("--epochs", type=int, default=Recipe.epochs)
    ap.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    ap.add_argument("--lr", type=float, default=Recipe.lr)
    ap.add_argument("--warmup-epochs", type=float, default=Recipe.warmup_epochs)
    ap.add_argument("--layer-decay", type=float, default=Recipe.layer_decay)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--report-every", type=int, default=5, help="epochs between test scores")
    ap.add_argument("--only", nargs="*", default=[], help="fine-tune only these labels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lock", default="", help="hold this file's flock for each fine-tuning")
    args = ap.parse_args(argv)
    if not args.checkpoint:
        ap.error("at least one --checkpoint LABEL=DIR is required")
    checkpoints = []
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--checkpoint takes LABEL=DIR, got {item!r}")
        checkpoints.append((label, path))

    torch.set_num_threads(args.threads)
    recipe = Recipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        layer_decay=args.layer_decay,
    )
    cfg, builders = encoders(checkpoints, args.baselines, args.drop_path)
    data, classes = run_images(cfg)
    print(
        f"finetune: {len(data[1])} training images, {len(data[3])} test images, "
        f"{classes} classes; {recipe}, drop path {args.drop_path}",
        flush=True,
    )
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # each seed for all first
        for label, build in builders.items():
            if args.only and label not in args.only:
                continue
            encoder = build()
            model = Classifier(encoder, encoder.out_dim, classes, cfg.views.mean, cfg.views.std)
            with locked(args.lock):
                result = finetune(model, data, recipe, seed, args.report_every, f"{label} s{seed}")
            row = {"encoder": label, "seed": seed, **result, "recipe": dataclasses.asdict(recipe)}
            row["drop_path"] = args.drop_path
            print("finetune:", json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
