"""The Markdown table ``benchmarks/method_quality.py`` writes per dataset: one row per run, with
the seeded random-init and plain-ViT columns only where some row of that dataset has them."""

from typing import Any


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
