"""Quality of every registered method at a small CPU budget (a benchmark, not a test).

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.method_quality \\
        --datasets embedded cifar10 --lock /tmp/sslpipe-heavy.lock --out bench-quality

Each method of ``ssl_models.registry.METHODS`` (or ``--methods``) goes through the real
pipeline, ``pipelines.train.trainer.pretrain`` on a config built as ``sslpipe pretrain`` builds
it, and is scored by the run's own final kNN top-1 against the same architecture at random
initialisation (``eval.knn_random_init``: the weights the run started from, seed
``train.seed``). That one random draw moves the baseline by about as much as the standard error of
a 1,000-query kNN, so ``--random-seeds N`` also scores the backbone initialised from seeds
``train.seed`` … ``train.seed + N - 1`` on the same bank and queries (no training: one extra
embedding pass) and reports their mean and the margin against it; for a ViT whose recipe sets layer
scale or BEiT's/SimMIM's small-normal init it also scores seed ``train.seed`` with the plain init
(Xavier, no layer scale), whose random features are the stronger baseline (:func:`plain_vit`).
Datasets:

  embedded  the built-in 32-pixel dataset with the laptop profile
            (pipelines/config/recipes/embedded.yaml), the default of ``sslpipe pretrain``: 8
            epochs, batch 256
  embedded-gray  the embedded set's images in grayscale (3 equal channels; the same shapes,
            positions and brightness, no hue), sharded once under <out>/cache and trained with
            the laptop profile: whether a method's features follow the set's random colours
  cifar10   a class-balanced subset of CIFAR-10 (--cifar-train / --cifar-test per class) from
            shared/data/cifar10-jpeg.tar.gz, unpacked and sharded once under --cache; trained with
            the same laptop profile (32 pixels too). Skipped with a message when the tarball is
            absent: the product never needs it.

One local Ray instance serves every run (``pretrain`` reuses an initialised Ray). With --lock,
each run holds that file's lock (flock) so a shared machine interleaves other work between
methods. Results go to <out>/quality.json after every run and to a Markdown table per dataset in
<out>/quality.md (and appended to --markdown, e.g. BENCHMARKS.md, when given).
"""

import argparse
import json
import os
import platform
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.baselines import (
    plain_changes,
    random_init_knn,
    random_init_knn_plain,
)
from benchmarks.quality_data import (
    CIFAR_CANDIDATES,
    locked,
    prepare_cifar,
    prepare_embedded_gray,
)
from pipelines.config.layers import build_config, deep_merge, embedded_profile, parse_set, recipe
from pipelines.config.schema import Config
from ssl_models.registry import METHODS


def method_config(
    method: str,
    run_root: Path,
    name: str,
    epochs: int | None,
    data: tuple[str, str] | None,
    overrides: Sequence[str] = (),
) -> Config:
    """The config ``sslpipe pretrain`` would build, plus the benchmark's storage and tracking.
    With ``data`` (train and eval shards of 32-pixel images) the laptop profile is applied
    explicitly, as it is only automatic without a data path. ``overrides`` are ``--set`` pairs
    applied last, as ``sslpipe pretrain --set`` would."""
    base = recipe(method)
    base = deep_merge(base, embedded_profile(method, base))
    sets = [
        f"train.storage={run_root / 'runs'}",
        f"train.name={name}",
        f"tracking.uri=sqlite:///{run_root / 'mlflow.db'}",
        "tracking.register=false",
        f"data.cache_dir={run_root.parent / 'sslpipe-data'}",
    ]
    if epochs:
        sets.append(f"train.epochs={epochs}")
    if data:
        sets += [f"data.path={data[0]}", f"data.eval_path={data[1]}"]
    sets += list(overrides)
    return build_config(deep_merge(base, parse_set(sets)))


def describe_backbone(cfg: Config) -> str:
    b = cfg.backbone
    if b.name.startswith("vit"):
        return f"{b.name} p{b.vit.patch_size} d{b.vit.dim}×{b.vit.depth}"
    return f"{b.name} ×{b.width:g}"


def run_one(method: str, dataset: str, cfg: Config, random_seeds: int = 0) -> dict[str, Any]:
    from pipelines.train.trainer import pretrain

    started = time.time()
    summary = pretrain(cfg)
    wall = round(time.time() - started, 1)
    m = summary["metrics"]
    knn, rnd = m.get("knn_top1"), m.get("knn_top1_random_init")
    extra: dict[str, Any] = {}
    if random_seeds > 0 and knn is not None:
        seeds = random_init_knn(cfg, random_seeds)
        mean = sum(seeds) / len(seeds)
        extra = {
            "random_init_seeds": seeds,
            "random_init_mean": round(mean, 4),
            "margin_vs_mean": round(knn - mean, 4),
        }
        plain = random_init_knn_plain(cfg)
        if plain is not None:
            extra["plain_init"] = plain_changes(cfg)
            extra["random_init_plain"] = plain
            extra["margin_vs_plain"] = round(knn - plain, 4)
    return {
        "method": method,
        "dataset": dataset,
        "family": METHODS[method].family,
        "backbone": describe_backbone(cfg),
        "epochs": cfg.train.epochs,
        "batch": cfg.train.batch_size,
        "steps": summary["steps"],
        "wall_seconds": wall,
        "knn_top1": knn,
        "knn_top1_random_init": rnd,
        "margin": None if knn is None or rnd is None else round(knn - rnd, 4),
        **extra,
    }


def random_only_row(method: str, dataset: str, cfg: Config, seeds: int) -> dict[str, Any]:
    """The baselines of :func:`run_one` without the training run (``--random-only``)."""
    row: dict[str, Any] = {
        "method": method,
        "dataset": dataset,
        "backbone": describe_backbone(cfg),
        "random_init_seeds": random_init_knn(cfg, max(1, seeds)),
    }
    plain = random_init_knn_plain(cfg)
    if plain is not None:
        row["plain_init"] = plain_changes(cfg)
        row["random_init_plain"] = plain
    return row


def table(rows: list[dict[str, Any]], dataset: str, note: str) -> str:
    """``### dataset``, the note, then the rows of ``rows`` whose ``dataset`` matches."""
    cols = [
        "method",
        "family",
        "backbone",
        "epochs",
        "steps",
        "wall",
        "kNN_top-1",
        "random_init",
        "margin",
    ]
    seeded = any(r.get("random_init_seeds") for r in rows if r["dataset"] == dataset)
    if seeded:
        cols += ["seeds", "random_init_mean_(range)", "margin_vs_mean"]
    scaled = any("random_init_plain" in r for r in rows if r["dataset"] == dataset)
    if scaled:
        cols += ["random_init_plain_(Xavier,_no_layer_scale)", "margin_vs_it"]
    head = "| " + " | ".join(c.replace("_", " ") for c in cols) + " |\n"
    head += "|" + "---|" * len(cols) + "\n"
    lines = []
    for r in rows:
        if r["dataset"] != dataset:
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | {r['family']} | | | | | failed: {r['error']} | | |")
            continue
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        margin = "–" if r["margin"] is None else f"{r['margin']:+.3f}"
        wall = f"{r['wall_seconds'] / 60:.1f} min"
        line = (
            f"| {r['method']} | {r['family']} | {r['backbone']} | {r['epochs']} | {r['steps']} | "
            f"{wall} | {fmt(r['knn_top1'])} | {fmt(r['knn_top1_random_init'])} | {margin} |"
        )
        if seeded:
            seeds = r.get("random_init_seeds")
            if seeds:
                spread = f"{r['random_init_mean']:.3f} ({min(seeds):.3f}-{max(seeds):.3f})"
                line += f" {len(seeds)} | {spread} | {r['margin_vs_mean']:+.3f} |"
            else:
                line += " | | |"
        if scaled:
            if "random_init_plain" in r:
                line += f" {r['random_init_plain']:.3f} | {r['margin_vs_plain']:+.3f} |"
            else:
                line += " | |"
        lines.append(line)
    return f"### {dataset}\n\n{note}\n\n{head}" + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="default: all registered")
    p.add_argument("--datasets", nargs="+", default=["embedded", "cifar10"])
    p.add_argument("--epochs", type=int, default=0, help="0: the laptop profile's (8)")
    p.add_argument("--out", default="bench-quality", help="run storage, MLflow and results")
    p.add_argument("--markdown", help="also append the tables to this file (e.g. BENCHMARKS.md)")
    p.add_argument("--lock", default="", help="flock this file around each run")
    p.add_argument(
        "--random-seeds",
        type=int,
        default=3,
        help="also score the random-init backbone of this many seeds (0: only the run's own)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every method (e.g. method_args.temperature=0.2); recorded in "
        "each result row",
    )
    p.add_argument(
        "--random-only",
        action="store_true",
        help="train nothing: print each method's random-init kNN (--random-seeds seeds, at least "
        "1) and, for a ViT with layer scale or a small-normal init, the same with the plain init",
    )
    p.add_argument("--cifar", type=Path, default=None, help="cifar10-jpeg.tar.gz")
    p.add_argument("--cifar-train", type=int, default=1000, help="training images per class")
    p.add_argument("--cifar-test", type=int, default=200, help="kNN query images per class")
    args = p.parse_args()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; registered: {sorted(METHODS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "quality.json"
    rows: list[dict[str, Any]] = (
        json.loads(results_path.read_text())["results"] if results_path.exists() else []
    )

    import ray

    from pipelines.train.trainer import ensure_ray

    notes = {}
    for dataset in args.datasets:
        data = None
        note = f"laptop profile, {args.epochs or 8} epochs"
        if dataset == "cifar10":
            tarball = args.cifar or next((c for c in CIFAR_CANDIDATES if c.exists()), None)
            if tarball is None or not tarball.exists():
                print(f"method_quality: skipping cifar10, {CIFAR_CANDIDATES[0]} is absent")
                continue
            with locked(args.lock):
                data = prepare_cifar(tarball, out / "cache", args.cifar_train, args.cifar_test)
            note = (
                f"CIFAR-10 subset: {args.cifar_train}/class train (bank), {args.cifar_test}/class "
                f"test (queries); laptop profile, {args.epochs or 8} epochs"
            )
        elif dataset == "embedded-gray":
            from pipelines.config.schema import DataConfig

            sizes = DataConfig().embedded_train_per_class, DataConfig().embedded_test_per_class
            with locked(args.lock):
                data = prepare_embedded_gray(out / "cache", *sizes)
            note = f"the embedded set in grayscale; laptop profile, {args.epochs or 8} epochs"
        elif dataset != "embedded":
            raise SystemExit(
                f"--datasets: {dataset!r} is not one of embedded, embedded-gray, cifar10"
            )
        notes[dataset] = note
        for method in args.methods:
            name = f"{dataset}-{method}-{time.strftime('%H%M%S')}"
            cfg = method_config(method, out / dataset, name, args.epochs or None, data, args.set)
            with locked(args.lock):
                # one instance for every run, sized as pretrain() sizes its own (workers plus
                # decode tasks: fewer CPUs than that and Ray Data waits forever for a slot)
                ensure_ray(cfg)
                if args.random_only:  # baselines only, nothing written
                    base = random_only_row(method, dataset, cfg, args.random_seeds)
                    if args.set:
                        base["overrides"] = list(args.set)
                    print(f"method_quality_random: {json.dumps(base)}", flush=True)
                    continue
                try:
                    row = run_one(method, dataset, cfg, args.random_seeds)
                except Exception as e:  # one broken method must not lose the others' figures
                    traceback.print_exc()
                    row = {"method": method, "dataset": dataset, "error": repr(e)[:200]}
                    row["family"] = METHODS[method].family
                if args.set:
                    row["overrides"] = list(args.set)
            rows = [r for r in rows if (r["method"], r["dataset"]) != (method, dataset)] + [row]
            print(f"method_quality: {json.dumps(row)}", flush=True)
            results_path.write_text(
                json.dumps(
                    {
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                        f"torch {torch.__version__}",
                        "date": time.strftime("%Y-%m-%d"),
                        "results": rows,
                    },
                    indent=2,
                )
            )
        if args.random_only:
            continue
        md = table(rows, dataset, note)
        (out / f"quality-{dataset}.md").write_text(md)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write("\n" + md)
    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    main()
