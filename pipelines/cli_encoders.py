"""``sslpipe eval | embed | register``: the commands that work on a registered encoder."""

import argparse
import json
from pathlib import Path

from pipelines.config import ConfigError
from pipelines.config_layers import parse_set


def eval_settings(args: argparse.Namespace):
    from pipelines.config import EvalConfig
    from pipelines.typed import from_dict

    sets = parse_set(args.set)
    unknown = set(sets) - {"eval"}
    if unknown:
        raise ConfigError(f"--set: only eval.* keys apply here, got {sorted(unknown)}")
    return from_dict(EvalConfig, sets.get("eval", {}), "eval")


def tracking_uri(args: argparse.Namespace) -> str:
    from pipelines.config import TrackingConfig
    from pipelines.tracking import absolute_uri

    return absolute_uri(args.tracking_uri or TrackingConfig.uri)


def emit(result: dict, summary_json: str | None) -> None:
    print(json.dumps(result, indent=2), flush=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(result, indent=2))


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.eval_sets import EvalSplit
    from pipelines.offline_eval import evaluate_registered

    split = EvalSplit(args.data, args.eval_data or "")
    result = evaluate_registered(
        args.kind, args.model, tracking_uri(args), split, eval_settings(args)
    )
    emit(result, args.summary_json)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from pipelines.offline_eval import write_embeddings

    result = write_embeddings(
        args.model, tracking_uri(args), args.data, args.out, eval_settings(args)
    )
    emit(result, None)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from pipelines.config import TrackingConfig
    from pipelines.encoders import register_checkpoint

    experiment = args.experiment or TrackingConfig.experiment
    result = register_checkpoint(
        args.run, args.step, tracking_uri(args), experiment, args.name or ""
    )
    emit(result, None)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    model_help = "registered encoder: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/encoder"
    e = sub.add_parser(
        "eval",
        help="kNN or linear-probe top-1 of a registered encoder on labeled shards",
        description="Evaluate a registered encoder. With --eval-data, --data is the bank / "
        "training set and --eval-data the queries / test set; without, a fixed 10%% of --data's "
        "rows (by key hash) are the queries.",
    )
    e.add_argument("kind", choices=["knn", "linear"])
    e.add_argument("--model", required=True, help=model_help)
    e.add_argument("--data", required=True, help="labeled shard directory (local or s3://)")
    e.add_argument("--eval-data", help="labeled held-out shards")
    e.add_argument("--summary-json", help="also write the result to this file")
    m = sub.add_parser("embed", help="write the embeddings of a shard set to Parquet")
    m.add_argument("--model", required=True, help=model_help)
    m.add_argument("--data", required=True, help="shard directory (local or s3://)")
    m.add_argument("--out", required=True, help="OUT.parquet: key, label, embedding")
    for p in (e, m):
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="eval.* settings, e.g. --set eval.knn_k=20 --set eval.linear_epochs=50",
        )
    r = sub.add_parser(
        "register",
        help="register the encoder of one recorded checkpoint of a run",
        description="Register the encoder of the checkpoint a run recorded at --step (the run's "
        "sslpipe.checkpoint.* tags list them).",
    )
    r.add_argument("run", metavar="RUN", help="MLflow run id (or run name)")
    r.add_argument("--step", type=int, required=True, help="the checkpoint's optimizer step")
    r.add_argument("--name", help="registered model name (default: the run's)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    r.add_argument("--experiment", help="experiment to look a run name up in (default: sslpipe)")
