"""``sslpipe``: shard | pretrain | methods."""

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


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pipelines.config import dump_yaml

    overrides = deep_merge(parse_set(args.set), _flag_overrides(args))
    cfg = load_config(args.method, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0

    from pipelines.train.trainer import pretrain

    summary = pretrain(cfg)
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
    sub.add_parser("methods", help="list the methods the registry knows")
    return parser


COMMANDS = {"pretrain": cmd_pretrain, "shard": cmd_shard, "methods": cmd_methods}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
