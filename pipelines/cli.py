"""``sslpipe``: shard | pretrain | eval | embed | register | methods."""

import argparse
import json
import sys
from pathlib import Path

from pipelines.config import ConfigError, deep_merge, load_config, parse_set
from ssl_models.registry import METHODS


def _pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (no arguments: SimCLR on the embedded dataset)",
        description="Pretrain an encoder on Ray, track it in MLflow, register it.",
    )
    p.add_argument("--method", choices=sorted(METHODS), help="method key (default: simclr)")
    p.add_argument("--data", help="shard directory from `sslpipe shard` (default: embedded)")
    p.add_argument("--eval-data", help="labeled held-out shards for the kNN evaluation")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size over all workers")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP processes)")
    p.add_argument("--storage", help="checkpoint root: local path or s3://bucket/prefix")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--config", help="YAML file overriding the method's recipe")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set optim.base_lr=0.5 (repeatable)",
    )
    p.add_argument("--summary-json", help="also write the summary to this file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (MLflow run id or run name) from its latest checkpoint; "
        "its own config applies, flags and --set override it (e.g. --epochs to extend)",
    )


def _flag_overrides(args: argparse.Namespace) -> dict:
    flags = {
        "data": {"path": args.data, "eval_path": args.eval_data},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "storage": args.storage,
        },
        "tracking": {"uri": args.tracking_uri},
    }
    return {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in flags.items()
        if any(v is not None for v in values.values())
    }


def _resume_config(args: argparse.Namespace, overrides: dict):
    """The stopped run's resolved config (its ``config.yaml`` artifact) under the overrides."""
    import tempfile

    import mlflow

    from pipelines.config import Config, TrackingConfig, build_config, read_yaml
    from pipelines.tracking import absolute_uri, find_run

    tracking = overrides.get("tracking", {})
    uri = absolute_uri(tracking.get("uri", TrackingConfig.uri))
    experiment = tracking.get("experiment", TrackingConfig.experiment)
    run = find_run(uri, experiment, args.resume)
    with tempfile.TemporaryDirectory() as d:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="config.yaml", dst_path=d, tracking_uri=uri
        )
        data = read_yaml(path)
    if args.config:
        data = deep_merge(data, read_yaml(args.config))
    if args.method and args.method != data.get("method", Config.method):
        raise ConfigError(f"--method {args.method}: run {args.resume} trained {data['method']}")
    return build_config(deep_merge(data, overrides)), run.info.run_id


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pipelines.config import dump_yaml

    overrides = deep_merge(parse_set(args.set), _flag_overrides(args))
    run_id = None
    if args.resume:
        cfg, run_id = _resume_config(args, overrides)
    else:
        cfg = load_config(args.method, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0

    from pipelines.train.trainer import pretrain

    summary = pretrain(cfg, resume_run_id=run_id)
    m = summary["metrics"]
    lines = [
        "",
        "sslpipe pretrain: done",
        f"  run id            {summary['run_id']}  ({summary['run_name']})",
    ]
    if "knn_top1" in m:
        random = m.get("knn_top1_random_init")
        vs = f"  vs {random:.3f} at random init" if random is not None else ""
        lines.append(f"  kNN top-1         {m['knn_top1']:.3f}{vs}  ({summary['knn_eval']})")
    lines += [
        f"  registered model  {summary['registered_model_uri'] or '(not registered)'}",
        f"  model             {summary['model_uri']}",
        f"  checkpoint        {summary['checkpoint']}",
        f"  time              {summary['wall_seconds']:.0f} s",
        f"  MLflow UI         {summary['mlflow_ui']}",
    ]
    print("\n".join(lines), flush=True)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from pipelines.data.shard import DEFAULT_TARGET_BYTES, shard_imagefolder

    target = int(args.target_mb * 2**20) if args.target_mb else DEFAULT_TARGET_BYTES
    manifest = shard_imagefolder(args.src, args.dest, target)
    print(
        f"sslpipe shard: {manifest.total_rows} images in {len(manifest.files)} files, "
        f"{len(manifest.class_names)} classes -> {args.dest}"
    )
    return 0


def _eval_config(args: argparse.Namespace):
    from pipelines.config import EvalConfig, from_dict

    sets = parse_set(args.set)
    unknown = set(sets) - {"eval"}
    if unknown:
        raise ConfigError(f"--set: only eval.* keys apply here, got {sorted(unknown)}")
    return from_dict(EvalConfig, sets.get("eval", {}), "eval")


def _tracking_uri(args: argparse.Namespace) -> str:
    from pipelines.config import TrackingConfig
    from pipelines.tracking import absolute_uri

    return absolute_uri(args.tracking_uri or TrackingConfig.uri)


def _emit(result: dict, summary_json: str | None) -> None:
    print(json.dumps(result, indent=2), flush=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(result, indent=2))


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.eval_sets import EvalSplit
    from pipelines.offline_eval import evaluate_registered

    split = EvalSplit(args.data, args.eval_data or "")
    result = evaluate_registered(
        args.kind, args.model, _tracking_uri(args), split, _eval_config(args)
    )
    _emit(result, args.summary_json)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from pipelines.offline_eval import write_embeddings

    result = write_embeddings(
        args.model, _tracking_uri(args), args.data, args.out, _eval_config(args)
    )
    _emit(result, None)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from pipelines.config import TrackingConfig
    from pipelines.encoders import register_checkpoint

    experiment = args.experiment or TrackingConfig.experiment
    result = register_checkpoint(
        args.run, args.step, _tracking_uri(args), experiment, args.name or ""
    )
    _emit(result, None)
    return 0


def _eval_parsers(sub: argparse._SubParsersAction) -> None:
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


def cmd_methods(args: argparse.Namespace) -> int:
    width = max(len(k) for k in METHODS)
    for key, entry in METHODS.items():
        print(f"{key:<{width}}  {entry.family:<24}  {entry.paper}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe", description="Self-supervised pretraining of image encoders on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    s = sub.add_parser("shard", help="turn an ImageFolder directory into Parquet shards")
    s.add_argument("src", help="SRC/<class>/<image> directory")
    s.add_argument("dest", help="output directory for shards and _manifest.json")
    s.add_argument("--target-mb", type=float, help="target shard file size (default 256 MB)")
    _eval_parsers(sub)
    sub.add_parser("methods", help="list the methods the registry knows")
    return parser


COMMANDS = {
    "pretrain": cmd_pretrain,
    "shard": cmd_shard,
    "eval": cmd_eval,
    "embed": cmd_embed,
    "register": cmd_register,
    "methods": cmd_methods,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 2
    except (LookupError, FileNotFoundError) as e:
        print(f"sslpipe: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
