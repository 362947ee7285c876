"""What a registered encoder says about itself in the MLflow registry: a description a person
reads on its page (method and paper, the data, how long it trained, its kNN top-1 against the
same architecture at random initialisation) and tags to search by (``method``, ``family``,
``data``, ``data_manifest_sha256``, ``epochs``, ``knn_top1``, ``knn_top1_random_init``).

Built from the config the encoder trained with and the run's own record: the tags the run was
started with (``sslpipe.data``, ``sslpipe.data_manifest_sha256``) and its final metrics.
"""

from typing import Any

from pipelines.config.schema import Config
from pipelines.tracking.secrets import redact, redact_text

# every tag a card may set; a registered model's previous card's are cleared with it
CARD_TAGS = (
    "method",
    "family",
    "data",
    "data_manifest_sha256",
    "epochs",
    "knn_top1",
    "knn_top1_random_init",
)


def model_card(
    cfg: Config, run: Any, epochs: int, metrics: dict[str, float], eval_note: str = ""
) -> tuple[str, dict[str, str]]:
    """(description in Markdown, tags) of the encoder ``run`` (an MLflow run) trained for
    ``epochs`` epochs with ``cfg``; ``metrics``: its ``knn_top1`` and
    ``knn_top1_random_init`` where measured; ``eval_note``: which rows were bank and queries."""
    from ssl_models.registry import get_method  # the methods' modules: torch, loaded late

    entry = get_method(cfg.method)
    run_tags = run.data.tags
    data = run_tags.get("sslpipe.data") or cfg.data.path or "the embedded dataset"
    digest = run_tags.get("sslpipe.data_manifest_sha256", "")
    knn, random_init = metrics.get("knn_top1"), metrics.get("knn_top1_random_init")
    lines = [
        f"**{cfg.method}** encoder ({entry.paper}; {entry.family}), trained {epochs} epochs on "
        f"`{data}`" + (f" (manifest sha256 `{digest}`)." if digest else "."),
    ]
    e = cfg.eval
    settings = f"weighted kNN, k={e.knn_k}, T={e.knn_temperature}, crop fraction {e.crop_fraction}"
    if knn is None:
        lines.append(
            "kNN top-1 not measured for this encoder: `sslpipe eval knn --model <this model>`."
        )
    else:
        against = (
            f", against {random_init:.3f} for the same architecture at random initialisation"
            if random_init is not None
            else ""
        )
        where = f"; {eval_note}" if eval_note else ""
        lines.append(f"kNN top-1 **{knn:.3f}**{against} ({settings}{where}).")
        lines.append("`sslpipe eval knn --model <this model>` scores it again with these settings.")
    lines.append(f"MLflow run `{run.info.run_id}` ({run.info.run_name}).")
    tags = {"method": cfg.method, "family": entry.family, "data": data, "epochs": str(epochs)}
    if digest:
        tags["data_manifest_sha256"] = digest
    if knn is not None:
        tags["knn_top1"] = f"{knn:.6f}"
    if random_init is not None:
        tags["knn_top1_random_init"] = f"{random_init:.6f}"
    return redact_text("\n\n".join(lines)), redact(tags)
