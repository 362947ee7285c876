"""``sslpipe survey``: the chosen methods at one budget on one data set, side by side as Tune
trials, each evaluated with kNN and a linear probe; a Markdown table and a bar chart.

Each method trains with its own recipe (and the embedded profile when no data path is given)
under the same ``train.epochs`` and the same flags; the evaluation uses the same splits and
settings for all (``eval.*``), on the driver once the trials are done.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config.layers import deep_merge, load_config
from pipelines.config.typed import ConfigError
from pipelines.tracking import runs as tracking
from pipelines.train.trainer import storage_root
from ssl_models.registry import METHODS, get_method
from tuning.sweep import tuner_of, write_spec


@dataclass
class SurveyOptions:
    methods: str  # "all" or KEY,KEY
    budget: int  # epochs, the same for every method
    overrides: dict[str, Any]  # --data, --config, flags, --set
    out: str = "survey"
    max_concurrent: int = 1
    name: str = ""


def method_list(methods: str) -> list[str]:
    if methods.strip() == "all":
        return list(METHODS)
    keys = [k.strip() for k in methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        raise ConfigError(f"--methods: {unknown or methods!r} not in {sorted(METHODS)} (or all)")
    return list(dict.fromkeys(keys))


def survey_spec(opts: SurveyOptions) -> dict[str, Any]:
    from pipelines.data.manifest import read_manifest
    from pipelines.train.trainer import resolve_data

    if opts.budget < 1:
        raise ConfigError(f"--budget {opts.budget}: at least one epoch")
    methods = method_list(opts.methods)
    overrides = deep_merge(opts.overrides, {"train": {"epochs": opts.budget}})
    first = load_config(methods[0], None, overrides)
    overrides = deep_merge(
        overrides,
        {
            "train": {"storage": storage_root(first), "checkpoint_every_steps": 0},
            "tracking": {"uri": tracking.absolute_uri(first.tracking.uri), "register": False},
            "data": {"cache_dir": os.path.abspath(first.data.cache_dir)},
        },
    )
    for m in methods:  # every recipe must accept the shared flags before anything starts
        load_config(m, None, overrides)
    split, _ = resolve_data(first)
    manifest, _, _ = read_manifest(split.train)
    if len(manifest.class_names) < 2:
        raise ConfigError(f"{split.train}: the survey's kNN and linear probe need labeled shards")
    name = opts.name or f"survey-{time.strftime('%Y%m%d-%H%M%S')}"
    return {
        "method": methods[0],
        "methods": methods,
        "overrides": overrides,
        "space": {},
        "sweep": name,
        "storage": f"{storage_root(first)}/{name}",  # absolute: Tune and pyarrow need it
        "tracking_uri": tracking.absolute_uri(first.tracking.uri),
        "experiment": first.tracking.experiment,
        "options": {
            "scheduler": "fifo",
            "metric": "loss",
            "mode": "min",
            "num_samples": 1,
            "max_concurrent": opts.max_concurrent,
        },
    }


def evaluate_trial(checkpoint_path: str) -> dict[str, float]:
    """kNN and linear-probe top-1 of a trial's final encoder (the run's ``eval.*`` settings)."""
    from pipelines.eval.encoders import encoders_from_state
    from pipelines.eval.frozen import evaluate_encoders
    from pipelines.train.trainer import resolve_data
    from tuning.trial import state_config

    state, cfg = state_config(checkpoint_path)
    split, _ = resolve_data(cfg)
    encoders = encoders_from_state(cfg, state, random_init=False)
    return evaluate_encoders(encoders, split, cfg.eval, linear=True).top1["trained"]


def markdown_table(rows: list[dict[str, Any]], budget: int) -> str:
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [
        f"# sslpipe survey: {len(rows)} methods, {budget} epochs each",
        "",
        "| method | family | kNN top-1 (%) | linear top-1 (%) | images/s | wall time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ips = "—" if r.get("images_per_sec") is None else f"{r['images_per_sec']:.0f}"
        wall = "—" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.0f}"
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(
            f"| {r['method']}{note} | {r['family']} | {pct(r.get('knn_top1'))} | "
            f"{pct(r.get('linear_top1'))} | {ips} | {wall} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    knn = [100 * (r.get("knn_top1") or 0.0) for r in rows]
    lin = [100 * (r.get("linear_top1") or 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4))
    ax.bar(x - 0.2, knn, 0.4, label="kNN top-1")
    ax.bar(x + 0.2, lin, 0.4, label="linear top-1")
    ax.set_xticks(x, [r["method"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_survey(opts: SurveyOptions) -> dict[str, Any]:
    from ray import tune

    from tuning.finish import child_runs
    from tuning.sweep import start_parent

    spec = survey_spec(opts)
    spec["parent_run_id"] = start_parent(spec, "survey")
    write_spec(spec)
    print(f"sslpipe survey: {len(spec['methods'])} methods, parent run {spec['parent_run_id']}")
    results = tuner_of(spec, [], {"method": tune.grid_search(spec["methods"])}).fit()
    children = child_runs(spec)
    rows = []
    for r in results:
        m = r.metrics or {}
        method = r.config["method"]
        row: dict[str, Any] = {"method": method, "family": get_method(method).family}
        if r.error or not m.get("checkpoint_path"):
            row["error"] = "failed"
        else:
            row.update(evaluate_trial(m["checkpoint_path"]))
            row["images_per_sec"] = m.get("images_per_sec")
            row["wall_seconds"] = m.get("time_total_s")
            child = children.get(m.get("trial_id"))
            if child is not None:
                tracking.log_dict(child.info.run_id, spec["tracking_uri"], row, "survey_row.json")
        rows.append(row)
    rows.sort(key=lambda r: spec["methods"].index(r["method"]))
    return write_report(spec, rows, opts)


def write_report(spec: dict[str, Any], rows: list[dict[str, Any]], opts: SurveyOptions):
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, opts.budget)
    (out / "survey.md").write_text(table)
    bar_chart(rows, out / "survey.png")
    from mlflow import MlflowClient

    client = MlflowClient(spec["tracking_uri"])
    run_id = spec["parent_run_id"]
    client.log_artifact(run_id, str(out / "survey.md"))
    client.log_artifact(run_id, str(out / "survey.png"))
    tracking.log_dict(run_id, spec["tracking_uri"], {"rows": rows}, "survey.json")
    failed = any(r.get("error") for r in rows)
    tracking.end_run(run_id, spec["tracking_uri"], "FAILED" if failed else "FINISHED")
    return {
        "parent_run_id": run_id,
        "rows": rows,
        "table": str(out / "survey.md"),
        "chart": str(out / "survey.png"),
    }
