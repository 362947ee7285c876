"""Masked image modeling on the embedded dataset in one process: which features the kNN sees.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.mim_diagnostics --method simmim \\
        --steps 184 --every 46 [--random-seeds 5] [--set optim.base_lr=3e-3 ...]

No Ray: the config is the one ``sslpipe pretrain --method KEY`` builds (recipe + laptop profile,
plus ``--set`` overrides), the method and ``TrainStep`` are the product's. Views of ``--images``
embedded training images are cut by the product's ``ViewMaker`` afresh for every pass over them
(as the epochs of a run), in batches of ``--batch`` (the real run's global batch, 256, by
default); the schedules use ``--steps-per-epoch`` and ``--epochs``. BEiT's and CAE's tokenizer is
fitted on the first pass's views with the product's ``fit_tokenizer``.

At initialisation and every ``--every`` steps it prints the loss and the kNN top-1 (k=200,
T=0.1; bank = ``--bank`` whole 32-pixel training images per class, queries = ``--queries`` test
images per class) of several features of the same ViT:

  blkI      mean patch token after block I (I = 0: the patch + position embedding), no final norm
  blkI+ln   the same tokens through the final LayerNorm, then averaged; the last block's is what
            ``backbone(x)`` (``pool: mean``) returns, i.e. what the pipeline's kNN uses
  cls+ln    the CLS token after the final norm (``pool: cls``)
  cls|mean+ln  the CLS token and the mean patch token side by side (BEiT's linear probe input)
  ...+std   standardised per dimension with the bank's mean and std before the cosine kNN (the
            parameter-free BatchNorm MAE's linear probe puts before its classifier)

``--random-seeds N`` also prints the random-init kNN of N differently seeded initialisations.

``--checkpoint DIR`` instead scores a pipeline run's checkpoint (and its initialisation) with the
same features, against the class and against each image's dominant colour channel (argmax of
its mean R, G, B): the embedded set draws colours at random for every image, so features that
find colours and not shapes score high on the second and at chance on the first.

``--checkpoint DIR --run-data`` scores the blocks' ``blkI+ln`` features on the run's own bank and
queries (any dataset, e.g. CIFAR-10) with the product's ``evaluate_knn``, as
``benchmarks/method_quality.py`` scores the run: the last block's figures are the run's kNN and
its random-init baseline. It reads the exported encoder (iBOT's and DINOv2's: the teacher), so
any ViT run's checkpoint can be scored; ``--pools mean cls`` adds every block's ``clsI+ln``
(the last block's is the run's kNN for ``pool: cls``). ``--probes knn linear`` adds the linear
probe of ``sslpipe eval linear`` on the same features (trained on the bank, scored on the
queries); ``--plain`` adds the same ViT with the plain init (Xavier, no layer scale), the
stricter random-init baseline of ``benchmarks/method_quality.py``.
"""

import argparse
import dataclasses
import os
import tempfile
import time

import torch

from benchmarks.swav_diagnostics import (
    checkpoint_methods,
    dominant_channel,
    eval_images,
    fixed_batches,
)
from pipelines.config import load_config
from pipelines.config_layers import parse_set
from pipelines.evaluate import knn_top1
from pipelines.tokenizer import fit_tokenizer
from pipelines.train.step import TrainStep, build_method, place, prepare_views
from ssl_models.tokenizer import save_tokenizer


@torch.no_grad()
def block_tokens(vit: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """x: (B, 3, H, W) -> the token sequence (B, 1 + L, D) after the embedding and after each
    block, captured by forward hooks on ``forward_tokens``."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in vit.blocks]
    pre = vit.blocks[0].register_forward_pre_hook(lambda _m, args: outs.append(args[0]))
    try:
        vit.forward_tokens(x)
    finally:
        for h in [*hooks, pre]:
            h.remove()
    return outs


@torch.no_grad()
def features(vit: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every feature named in the module docstring, for images (N, 3, H, W), eval mode."""
    was = vit.training
    vit.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for x in images.split(256):
        seq = block_tokens(vit, x)
        for i, t in enumerate(seq):
            parts.setdefault(f"blk{i}", []).append(t[:, 1:].mean(1))
            parts.setdefault(f"blk{i}+ln", []).append(vit.norm(t[:, 1:]).mean(1))
        last = vit.norm(seq[-1])
        parts.setdefault("cls+ln", []).append(last[:, 0])
        # BEiT's linear probe feature: [CLS, mean patch token] side by side
        parts.setdefault("cls|mean+ln", []).append(torch.cat([last[:, 0], last[:, 1:].mean(1)], 1))
    vit.train(was)
    return {k: torch.cat(v) for k, v in parts.items()}


def knn_table(
    vit: torch.nn.Module, bank, query, names: list[str] | None = None
) -> dict[str, float]:
    fb, fq = features(vit, bank[0]), features(vit, query[0])
    out = {}
    for name in names or list(fb):
        out[name] = knn_top1(fb[name], bank[1], fq[name], query[1], 10)
        mu, sd = fb[name].mean(0), fb[name].std(0) + 1e-6
        out[name + "+std"] = knn_top1(
            (fb[name] - mu) / sd, bank[1], (fq[name] - mu) / sd, query[1], 10
        )
    return out


def score_checkpoint(path: str, bank_per_class: int, query_per_class: int) -> None:
    """Class and colour kNN of a run's checkpoint and of its initialisation."""
    _, cfg, methods = checkpoint_methods(path)
    bank, query = eval_images(cfg, bank_per_class, 0), eval_images(cfg, query_per_class, 1)
    colour = [
        (bank[0], dominant_channel(cfg, bank[0])),
        (query[0], dominant_channel(cfg, query[0])),
    ]
    names = [f"blk{i}+ln" for i in range(cfg.backbone.vit.depth + 1)] + ["cls+ln", "cls|mean+ln"]
    for label, method in methods.items():
        print_table(f"{label}, class:", knn_table(method.backbone, bank, query, names))
        print_table(f"{label}, colour:", knn_table(method.backbone, *colour, names))


class BlockFeature(torch.nn.Module):
    """``blkI+ln`` of :func:`features` as an encoder: (B, 3, H, W) -> (B, D); ``pool="cls"``:
    the CLS token after block I through the final LayerNorm (``clsI+ln``; the last block's is
    ``pool: cls``'s output)."""

    def __init__(self, vit: torch.nn.Module, index: int, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.vit, self.index, self.pool, self.out_dim = vit, index, pool, vit.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = block_tokens(self.vit, x)[self.index]
        if self.pool == "cls":
            return self.vit.norm(tokens[:, 0])
        return self.vit.norm(tokens[:, 1:]).mean(1)


def score_checkpoint_on_run_data(
    path: str,
    pools: tuple[str, ...] = ("mean",),
    probes: tuple[str, ...] = ("knn",),
    plain: bool = False,
) -> None:
    """Every block's class kNN (and/or linear probe) for a run's checkpoint and its
    initialisation, on the run's own bank and queries; the exported encoder's blocks (an EMA
    teacher's, where it has one). ``plain``: also the same ViT with the plain init (seed
    ``train.seed``), the baseline ``method_quality`` scores beside the run's own init."""
    from benchmarks.baselines import plain_vit, run_data_knn, run_data_linear
    from pipelines.encoders import eval_image_size
    from ssl_models.export import Encoder

    _, cfg, methods = checkpoint_methods(path)
    if plain:
        plain_cfg = plain_vit(cfg)
        if plain_cfg is None:
            print("--plain: the run's ViT has the plain init; its initialisation is the baseline")
        else:
            torch.manual_seed(cfg.train.seed)
            methods["plain initialisation"] = build_method(plain_cfg).eval()
    size, (mean, std) = eval_image_size(cfg), (cfg.views.mean, cfg.views.std)
    names = {"mean": "blk{}+ln", "cls": "cls{}+ln"}
    scorers = {"knn": ("class", run_data_knn), "linear": ("linear", run_data_linear)}
    for label, method in methods.items():
        encoders = {
            names[pool].format(i): Encoder(BlockFeature(method.encoder, i, pool), mean, std, size)
            for pool in pools
            for i in range(cfg.backbone.vit.depth + 1)
        }
        for probe in probes:
            kind, score = scorers[probe]
            print_table(f"{label}, {kind}:", score(cfg, encoders))


def print_table(label: str, scores: dict[str, float]) -> None:
    print(label, " ".join(f"{k}={v:.3f}" for k, v in scores.items()), flush=True)


def with_tokenizer(cfg, batches):
    """BEiT and CAE: the config with a tokenizer fitted on these batches' views."""
    gen = torch.Generator().manual_seed(0)
    views = (
        prepare_views({"global": b["global"]}, cfg, torch.device("cpu"), gen)["global"][:, 0]
        for b in batches
    )
    tok, stats = fit_tokenizer(cfg, views)
    path = os.path.join(tempfile.mkdtemp(prefix="mim-diag-"), "tokenizer.pt")
    save_tokenizer(tok, path)
    print(f"tokenizer: {stats}", flush=True)
    tcfg = dataclasses.replace(cfg.method_args.tokenizer, path=path)
    return dataclasses.replace(
        cfg, method_args=dataclasses.replace(cfg.method_args, tokenizer=tcfg)
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["mae", "simmim", "beit", "cae"])
    ap.add_argument("--checkpoint", help="only: score this run checkpoint directory")
    ap.add_argument(
        "--run-data", action="store_true", help="with --checkpoint: on the run's bank and queries"
    )
    ap.add_argument(
        "--pools",
        nargs="+",
        choices=["mean", "cls"],
        default=["mean"],
        help="with --run-data: the mean patch token (blkI+ln), the CLS token (clsI+ln), or both",
    )
    ap.add_argument(
        "--probes",
        nargs="+",
        choices=["knn", "linear"],
        default=["knn"],
        help="with --run-data: weighted kNN and/or the linear probe of `sslpipe eval linear`",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="with --run-data: also the same ViT with the plain init (Xavier, no layer scale)",
    )
    ap.add_argument("--steps", type=int, default=184)
    ap.add_argument("--images", type=int, default=6000, help="embedded training images")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps-per-epoch", type=int, default=23)
    ap.add_argument("--epochs", type=int, default=8, help="for the schedules' length")
    ap.add_argument("--bank", type=int, default=300, help="kNN bank images per class")
    ap.add_argument("--queries", type=int, default=100, help="kNN query images per class")
    ap.add_argument("--every", type=int, default=46)
    ap.add_argument("--random-seeds", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.checkpoint and args.run_data:
        score_checkpoint_on_run_data(
            args.checkpoint, tuple(args.pools), tuple(args.probes), args.plain
        )
        return
    if args.checkpoint:
        score_checkpoint(args.checkpoint, args.bank, args.queries)
        return
    if not args.method:
        ap.error("--method or --checkpoint is required")
    cfg = load_config(args.method, overrides=parse_set(args.set))
    print(cfg.backbone.vit, cfg.method_args, cfg.optim, sep="\n", flush=True)
    bank, query = eval_images(cfg, args.bank, 0), eval_images(cfg, args.queries, 1)
    batches = fixed_batches(cfg, args.images, args.batch, 0)
    if args.method in ("beit", "cae"):
        cfg = with_tokenizer(cfg, batches)

    for s in range(args.random_seeds):
        torch.manual_seed(s)
        print_table(f"random init seed {s}:", knn_table(build_method(cfg).backbone, bank, query))

    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    method = place(build_method(cfg), cfg, device)
    total = args.steps_per_epoch * args.epochs
    step_fn = TrainStep(method, cfg, device, total, args.steps_per_epoch)
    print_table("step 0 (init):", knn_table(method.backbone, bank, query))
    losses: list[float] = []
    started = time.time()
    for step in range(args.steps):
        cycle, index = divmod(step, len(batches))
        if index == 0 and cycle > 0:
            batches = fixed_batches(cfg, args.images, args.batch, cycle)
        result = step_fn(batches[index], step)
        losses.append(result.loss)
        if (step + 1) % args.every == 0 or step == args.steps - 1:
            recent = sum(losses[-10:]) / len(losses[-10:])
            extra = {k: round(v, 3) for k, v in result.metrics.items() if k not in ("loss",)}
            print(
                f"step {step + 1}: loss (mean of last 10) {recent:.4f} {extra} "
                f"[{time.time() - started:.0f} s]",
                flush=True,
            )
            print_table(f"step {step + 1}:", knn_table(method.backbone, bank, query))


if __name__ == "__main__":
    main()
