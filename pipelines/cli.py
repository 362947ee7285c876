"""``sslpipe``: shard | pretrain | eval | embed | register | tune | survey | methods."""

import argparse
import json
import os
import sys
from pathlib import Path

from pipelines import cli_encoders, cli_shard
from pipelines.cluster_checks import ClusterError, demands_of
from pipelines.config import ConfigError, load_config
from pipelines.config_layers import deep_merge, parse_set
from pipelines.jobs import add_cluster_arguments, submit_or_connect
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
    add_cluster_arguments(p)
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

    from pipelines.config import Config, TrackingConfig, build_config
    from pipelines.config_layers import read_yaml
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
    from pipelines.config_layers import dump_yaml

    overrides = deep_merge(parse_set(args.set), _flag_overrides(args))
    run_id = None
    if args.resume and args.address and args.address.startswith("http") and not args.print_config:
        # the stopped run's config lives in its MLflow run, which the cluster reaches
        return submit_or_connect(args, args.argv)
    if args.resume:
        cfg, run_id = _resume_config(args, overrides)
    else:
        cfg = load_config(args.method, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from pipelines.jobs import emit_summary

    outputs = {"--storage": cfg.train.storage, "--tracking-uri": cfg.tracking.uri}
    exit_code = submit_or_connect(args, args.argv, demands_of(cfg), outputs)
    if exit_code is not None:  # ran as a Ray job
        return exit_code

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
    emit_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
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
    cli_shard.add_parser(sub)
    cli_encoders.add_parsers(sub)
    from tuning.commands import add_parsers

    add_parsers(sub)
    sub.add_parser("methods", help="list the methods the registry knows")
    return parser


COMMANDS = {
    "pretrain": cmd_pretrain,
    "shard": cli_shard.cmd_shard,
    "eval": cli_encoders.cmd_eval,
    "embed": cli_encoders.cmd_embed,
    "register": cli_encoders.cmd_register,
    "methods": cmd_methods,
    "tune": lambda args: _tuning("cmd_tune", args),
    "survey": lambda args: _tuning("cmd_survey", args),
}


def _tuning(name: str, args: argparse.Namespace) -> int:
    import tuning.commands

    return getattr(tuning.commands, name)(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as typed: a Ray job (--address http://...) reruns it
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 2
    except ClusterError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 1
    except (LookupError, FileNotFoundError) as e:
        if os.environ.get("SSLPIPE_TRACEBACK") == "1":
            raise  # where an unexpected KeyError came from
        print(f"sslpipe: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
