"""``sslpipe eval knn|linear``: a registered encoder's top-1 on labeled shards."""

import argparse
import json
from pathlib import Path

from pipelines.cli import flags

MODEL_HELP = "registered encoder: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/encoder"
EVAL_SET_HELP = "eval.* settings, e.g. --set eval.knn_k=20 --set eval.linear_epochs=50"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="kNN or linear-probe top-1 of a registered encoder on labeled shards",
        description="Evaluate a registered encoder. With --eval-data, --data is the bank / "
        "training set and --eval-data the queries / test set; without, a fixed 10% of --data's "
        "rows (by key hash) are the queries.",
    )
    p.add_argument("kind", choices=["knn", "linear"], help="weighted kNN, or a linear probe")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    flags.add_data(p, required=True)
    flags.add_tracking(p)
    flags.add_set(p, EVAL_SET_HELP)
    flags.add_summary(p)
    flags.add_verbose(p)
    p.set_defaults(run=run)


def eval_settings(args: argparse.Namespace):
    """``--set eval.*`` as an ``EvalConfig``; other sections are errors."""
    from pipelines.config.layers import parse_set
    from pipelines.config.schema import EvalConfig
    from pipelines.config.typed import ConfigError, from_dict

    sets = parse_set(args.set)
    unknown = set(sets) - {"eval"}
    if unknown:
        raise ConfigError(f"--set: only eval.* keys apply here, got {sorted(unknown)}")
    return from_dict(EvalConfig, sets.get("eval", {}), "eval")


def emit(result: dict, summary_json: str | None) -> None:
    print(json.dumps(result, indent=2), flush=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(result, indent=2))


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.offline import evaluate_registered
    from pipelines.eval.sets import EvalSplit

    split = EvalSplit(args.data, args.eval_data or "")
    uri = flags.tracking_uri(args)
    result = evaluate_registered(args.kind, args.model, uri, split, eval_settings(args))
    emit(result, args.summary_json)
    return 0
