"""``sslpipe eval knn|linear``: a registered encoder's top-1 on labeled shards."""

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.cli import flags

MODEL_HELP = "registered encoder: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/encoder"
EVAL_SET_HELP = (
    "override one of the evaluation settings the encoder was logged with (its run's eval.*: "
    "image_size, crop_fraction, knn_k, knn_temperature, linear_*), e.g. --set eval.knn_k=20 "
    "(repeatable)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="kNN or linear-probe top-1 of a registered encoder on labeled shards",
        description="Evaluate a registered encoder with the evaluation settings its run used, "
        "so the run's own data reads back the run's own figure. Without --data: the embedded "
        "dataset the default run trains on (its train split as the bank / training set, its "
        "test split as the queries / test set). With --eval-data, --data is the bank and "
        "--eval-data the queries; without, a fixed 10% of --data's rows (by key hash) are "
        "the queries.",
    )
    p.add_argument("kind", choices=["knn", "linear"], help="weighted kNN, or a linear probe")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    flags.add_data(p)
    flags.add_tracking(p)
    flags.add_set(p, EVAL_SET_HELP)
    flags.add_summary(p)
    flags.add_verbose(p)
    p.set_defaults(run=run)


def eval_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--set eval.*`` as overrides of the logged settings, each checked against
    ``EvalConfig``; other sections are errors."""
    from pipelines.config.layers import parse_set
    from pipelines.config.schema import EvalConfig
    from pipelines.config.typed import ConfigError, from_dict

    sets = parse_set(args.set)
    unknown = set(sets) - {"eval"}
    if unknown:
        raise ConfigError(f"--set: only eval.* keys apply here, got {sorted(unknown)}")
    overrides = sets.get("eval", {})
    from_dict(EvalConfig, overrides, "eval")  # names and types, before anything loads
    return overrides


def emit(result: dict, summary_json: str | None) -> None:
    print(json.dumps(result, indent=2), flush=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(result, indent=2))


def run(args: argparse.Namespace) -> int:
    from pipelines.config.typed import ConfigError
    from pipelines.eval.offline import evaluate_registered
    from pipelines.eval.sets import EvalSplit

    if args.eval_data and not args.data:
        raise ConfigError("--eval-data needs --data (the bank); with neither, the embedded set")
    split = EvalSplit(args.data, args.eval_data or "") if args.data else None
    uri = flags.tracking_uri(args)
    result = evaluate_registered(args.kind, args.model, uri, split, eval_settings(args))
    emit(result, args.summary_json)
    return 0
