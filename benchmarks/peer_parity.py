"""sslpipe against lightly, side by side: the same method, data, backbone, views, optimizer and
budget, trained by both and scored by one evaluator, in one run on one machine.

    pip install -e '.[bench]'     # lightly, pinned
    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.peer_parity \\
        --epochs 10 --seeds 2 --lock /tmp/sslpipe-heavy.lock --out bench-parity \\
        --markdown BENCHMARKS.md

Data: a class-balanced subset of CIFAR-10 from ``shared/data/cifar10-jpeg.tar.gz``
(``--train-per-class`` images per class to train on and as the kNN bank, ``--test-per-class``
per class as the queries), unpacked once under ``--cache`` both as JPEG folders (lightly's
side reads them with torchvision's ``ImageFolder``) and as sslpipe shards of the same files.

Per method and seed:

- sslpipe: ``sslpipe pretrain --config parity.yaml`` in its own directory, as a user runs it
  (Ray, MLflow, registry and all), where ``parity.yaml`` names the method, ``profile: laptop``
  (ResNet-18 x0.25 with the CIFAR stem for the ResNet methods, the small ViT for MAE, 32-pixel
  views), the data, epochs and seed, and ``eval.knn_random_init: false``: lightly's side
  scores only its trained encoder, so sslpipe's does too (its default also scores the random
  init, about 2 s). Its quality is the run's own final kNN top-1.
- the random-init baseline: the architecture sslpipe's run started from (same seed), scored by
  the same evaluator after the pair, outside both timings.
- lightly: ``benchmarks/peer_lightly.py`` given the config sslpipe resolved from that file
  (``--print-config``): lightly's losses, heads, transforms and momentum utilities in a plain
  PyTorch loop over a torchvision ``DataLoader``; scored by the same evaluator
  (``pipelines.eval.frozen.evaluate_encoders``, k = 200, T = 0.1, on the same bank and queries).

Both are timed from process start to exit (start-up, training, evaluation and, for sslpipe,
model logging and registration). Before the first pair, one untimed process imports both
sides' libraries and starts and stops a local Ray, so that neither side's first run pays alone
for reading them from a cold disk cache (measured: 11 s on sslpipe's first step). Each pair
holds ``--lock`` (flock) while it runs so nothing else shares the machine, and the side that
goes first alternates with the seed.

Reported per method: kNN top-1 of both and of the random init, their difference in standard
errors, wall time and images/s end to end for both, the wall-time ratio (lightly ÷ sslpipe), time
to the first optimizer step and sslpipe's training share. The standard error of a side's mean
over seeds comes from the seed-to-seed spread pooled over every method and both sides (two
seeds give one degree of freedom per method and side: a spread that happens to be tiny would
make any difference look significant); with one seed it is the binomial error of the queries.
The difference's standard error is the root of both sides' squares. ``--table-only`` rebuilds
the table from ``parity.json`` without training. Results go to ``<out>/parity.json`` after every
run and the table to ``<out>/parity.md`` (and appended to ``--markdown``).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.quality_data import CIFAR_CANDIDATES, locked, prepare_cifar

METHODS = ["simclr", "moco_v2", "byol", "simsiam", "barlow_twins", "vicreg", "swav", "dino", "mae"]
REPO = Path(__file__).resolve().parents[1]
SSLPIPE = str(Path(sys.executable).with_name("sslpipe"))


# read once before any timing: the files both sides import and Ray's binaries
WARM_UP = (
    "import torch, torchvision, lightly, mlflow, mlflow.pyfunc, ray, ray.data, ray.train.torch; "
    "ray.init(address='local', num_cpus=1, include_dashboard=False); ray.shutdown()"
)


def warm_up() -> float:
    """One untimed process that imports what both sides import and starts a local Ray, so the
    first timed run finds the file cache as every later one does; its seconds."""
    started = time.time()
    subprocess.run([sys.executable, "-c", WARM_UP], check=True, capture_output=True)
    return time.time() - started


def run_timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run ``cmd`` in ``cwd`` with output to ``log``; (start time, wall seconds). A failure
    names the command and the log's last lines."""
    started = time.time()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - started
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (in {cwd}):\n{tail}")
    return started, wall


def user_config(method: str, seed: int, epochs: int, data: dict, root: Path) -> tuple[Path, dict]:
    """``root/<method>/parity-seed<S>.yaml``, the file a user would write, and the config
    sslpipe resolves from it (``--print-config``), saved beside it for lightly's side."""
    import yaml

    cwd = root / method
    cwd.mkdir(parents=True, exist_ok=True)
    config = cwd / f"parity-seed{seed}.yaml"
    config.write_text(
        f"method: {method}\nprofile: laptop\ntrain:\n  epochs: {epochs}\n  seed: {seed}\n"
        f"data:\n  path: {data['train']}\n  eval_path: {data['test']}\n"
        "eval:\n  knn_random_init: false\n"  # scored outside the timing: random_init_knn
    )
    cmd = [SSLPIPE, "pretrain", "--config", str(config), "--print-config"]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout
    (cwd / f"resolved-seed{seed}.yaml").write_text(out)
    return config, yaml.safe_load(out)


def sslpipe_side(config: Path, seed: int, epochs: int, data: dict) -> dict:
    """``sslpipe pretrain --config`` in the config's directory (its runs and registry there)."""
    cwd = config.parent
    summary = cwd / f"summary-seed{seed}.json"
    cmd = [SSLPIPE, "pretrain", "--config", str(config), "--summary-json", str(summary)]
    started, wall = run_timed(cmd, cwd, cwd / f"sslpipe-seed{seed}.log")
    s = json.loads(summary.read_text())
    t = s.get("timings", {})
    return {
        "knn_top1": s["metrics"]["knn_top1"],
        "wall_s": round(wall, 1),
        "first_step_s": round(t["first_step_at"] - started, 1) if t else None,
        "training_share": round(t["training_s"] / wall, 3) if t else None,
        "steps": s["steps"],
    }


def random_init_knn(resolved: dict) -> float:
    """kNN top-1 of the encoder sslpipe's run started from (``eval.knn_random_init`` scores
    the same one inside a run), on the run's bank and queries."""
    from benchmarks.baselines import run_data_scores
    from pipelines.config.layers import build_config
    from pipelines.eval.encoders import encoders_from_state
    from pipelines.eval.frozen import KNN

    cfg = build_config(resolved)
    encoders = encoders_from_state(cfg, None, random_init=True)
    return run_data_scores(cfg, encoders)["random_init"][KNN]


def lightly_side(config: Path, seed: int, epochs: int, data: dict) -> dict:
    """``benchmarks.peer_lightly`` on the config sslpipe resolved from the same file."""
    cwd = config.parent
    result = cwd / f"lightly-seed{seed}.json"
    cmd = [sys.executable, "-m", "benchmarks.peer_lightly"]
    cmd += ["--config", str(cwd / f"resolved-seed{seed}.yaml")]
    cmd += ["--train-folder", data["train_folder"], "--seed", str(seed), "--epochs", str(epochs)]
    cmd += ["--out", str(result), "--started-at", str(time.time())]
    _, wall = run_timed(cmd, cwd, cwd / f"lightly-seed{seed}.log")
    r = json.loads(result.read_text())
    return {
        "knn_top1": r["knn_top1"],
        "wall_s": round(wall, 1),
        "first_step_s": round(r["first_step_s"], 1),
        "steps": r["steps"],
        "notes": r.get("notes", []),
    }


def seed_sd(records: list[dict]) -> float | None:
    """Per-run standard deviation of kNN top-1 across seeds, pooled over every method and
    side that has two seeds or more (None when none has)."""
    squares, dof = 0.0, 0
    for method in dict.fromkeys(r["method"] for r in records):
        for side in ("sslpipe", "lightly"):
            values = [r[side]["knn_top1"] for r in records if r["method"] == method]
            if len(values) > 1:
                m = statistics.fmean(values)
                squares += sum((v - m) ** 2 for v in values)
                dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


def mean_se(values: list[float], queries: int, sd: float | None) -> tuple[float, float]:
    """Mean over seeds and its standard error: the pooled per-run ``sd`` over the root of the
    seed count, or the binomial error of ``queries`` for a single seed."""
    m = statistics.fmean(values)
    if len(values) > 1 and sd is not None:
        return m, sd / math.sqrt(len(values))
    return m, math.sqrt(max(m * (1 - m), 1e-9) / queries)


def random_init_of(record: dict) -> float | None:
    """A pair's random-init kNN (records before it was scored outside the timing keep it on
    sslpipe's side)."""
    return record.get("knn_top1_random_init", record["sslpipe"].get("knn_top1_random_init"))


def aggregate(records: list[dict], queries: int) -> list[dict]:
    rows, sd = [], seed_sd(records)
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        sides = {side: [r[side] for r in mine] for side in ("sslpipe", "lightly")}
        (s_knn, s_se), (l_knn, l_se) = (
            mean_se([x["knn_top1"] for x in sides[side]], queries, sd) for side in sides
        )
        se = math.hypot(s_se, l_se)
        wall = {side: statistics.fmean(x["wall_s"] for x in sides[side]) for side in sides}
        images = mine[0]["batch"] * sides["sslpipe"][0]["steps"]  # per run, both sides
        randoms = [random_init_of(r) for r in mine if random_init_of(r) is not None]
        rows.append(
            {
                "method": method,
                "seeds": len(mine),
                "knn_sslpipe": round(s_knn, 4),
                "knn_lightly": round(l_knn, 4),
                "knn_random": round(statistics.fmean(randoms), 4) if randoms else None,
                "diff_se": round((s_knn - l_knn) / se, 2) if se else 0.0,
                "wall_sslpipe": round(wall["sslpipe"], 1),
                "wall_lightly": round(wall["lightly"], 1),
                "speedup": round(wall["lightly"] / wall["sslpipe"], 2),
                "images_per_s_sslpipe": round(images / wall["sslpipe"]),
                "images_per_s_lightly": round(images / wall["lightly"]),
                "first_step_sslpipe": statistics.fmean(x["first_step_s"] for x in sides["sslpipe"]),
                "first_step_lightly": statistics.fmean(x["first_step_s"] for x in sides["lightly"]),
                "training_share": statistics.fmean(x["training_share"] for x in sides["sslpipe"]),
            }
        )
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| method | kNN sslpipe | kNN lightly | random init | Δ (SE) | wall sslpipe | "
        "wall lightly | speed-up | images/s sslpipe / lightly | first step sslpipe / lightly "
        "| training share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        random = f"{r['knn_random']:.3f}" if r["knn_random"] is not None else "–"
        lines.append(
            f"| {r['method']} | {r['knn_sslpipe']:.3f} | {r['knn_lightly']:.3f} | {random} | "
            f"{r['diff_se']:+.1f} | {r['wall_sslpipe']:.0f} s | {r['wall_lightly']:.0f} s | "
            f"{r['speedup']:.2f}x | {r['images_per_s_sslpipe']} / {r['images_per_s_lightly']} | "
            f"{r['first_step_sslpipe']:.0f} s / {r['first_step_lightly']:.0f} s | "
            f"{r['training_share']:.0%} |"
        )
    if len(rows) > 1:
        s = statistics.fmean(r["knn_sslpipe"] for r in rows)
        lt = statistics.fmean(r["knn_lightly"] for r in rows)
        lines.append(f"| **mean** | {s:.3f} | {lt:.3f} | | | | | | | | |")
    return "\n".join(lines) + "\n"


def run_pairs(args: argparse.Namespace, tarball: Path, out: Path, records: list) -> list:
    """Train every method and seed asked for on both sides; ``records`` with those pairs
    replaced, saved to ``out/parity.json`` after each pair."""
    train, test = prepare_cifar(
        tarball, Path(args.cache), args.train_per_class, args.test_per_class, keep_folders=True
    )
    data = {"train": train, "test": test, "train_folder": str(Path(train).parent / "folder-train")}
    results = out / "parity.json"
    with locked(args.lock):
        print(f"warm-up (untimed): {warm_up():.0f} s", flush=True)
    for seed in range(args.seeds):  # every method once before any twice: a cut run covers all
        for method in args.methods:
            sides = {"sslpipe": sslpipe_side, "lightly": lightly_side}
            order = list(sides) if seed % 2 == 0 else list(sides)[::-1]
            config, resolved = user_config(method, seed, args.epochs, data, out)
            batch = resolved["train"]["batch_size"]
            record = {"method": method, "seed": seed, "epochs": args.epochs, "batch": batch}
            with locked(args.lock):
                for side in order:
                    print(f"{method} seed {seed}: {side} …", flush=True)
                    record[side] = sides[side](config, seed, args.epochs, data)
                record["knn_top1_random_init"] = round(random_init_knn(resolved), 4)
            key = (method, seed, args.epochs)  # another budget's pair stays
            records = [r for r in records if (r["method"], r["seed"], r["epochs"]) != key]
            records.append(record)
            results.write_text(json.dumps(records, indent=1))
            s, lt = record["sslpipe"], record["lightly"]
            print(
                f"  kNN {s['knn_top1']:.3f} vs {lt['knn_top1']:.3f}, wall {s['wall_s']:.0f} s "
                f"vs {lt['wall_s']:.0f} s ({lt['wall_s'] / s['wall_s']:.2f}x)",
                flush=True,
            )
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 … N-1 for both sides")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--cache", default="/tmp/sslpipe-parity-cache", help="unpacked data, reused")
    p.add_argument("--out", default="bench-parity")
    p.add_argument("--lock", default="", help="flock this file around each pair of runs")
    p.add_argument("--markdown", default="", help="also append the table to this file")
    p.add_argument("--table-only", action="store_true", help="table from parity.json, no runs")
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "parity.json"
    records = json.loads(results.read_text()) if results.exists() else []
    if not args.table_only:
        tarball = next((c for c in CIFAR_CANDIDATES if c.exists()), None)
        if tarball is None:
            print(f"skipped: no CIFAR-10 tarball at {', '.join(map(str, CIFAR_CANDIDATES))}")
            return 0
        records = run_pairs(args, tarball, out, records)
    chosen = [r for r in records if r["method"] in args.methods and r["epochs"] == args.epochs]
    rows = aggregate(chosen, args.test_per_class * 10)
    seeds = len({r["seed"] for r in chosen})
    header = (
        f"#### Parity with lightly: CIFAR-10 {args.train_per_class}/{args.test_per_class} per "
        f"class, {args.epochs} epochs, {seeds} seeds ({platform.node()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})"
    )
    text = table(rows, header)
    if (sd := seed_sd(chosen)) is not None:
        text += (
            f"\nSeed-to-seed spread of one run's kNN top-1, pooled: {sd:.2%} (Δ is in its SE).\n"
        )
    (out / "parity.md").write_text(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
