"""``sslpipe register``: register the encoder of one recorded checkpoint of a run."""

import argparse

from pipelines.cli import flags
from pipelines.cli.eval import emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register the encoder of one recorded checkpoint of a run",
        description="Register the encoder of the checkpoint a run recorded at --step (the run's "
        "sslpipe.checkpoint.* tags list them).",
    )
    p.add_argument("run_ref", metavar="RUN", help="MLflow run id (or run name)")
    p.add_argument("--step", type=int, required=True, help="the checkpoint's optimizer step")
    p.add_argument("--name", help="registered model name (default: the run's)")
    flags.add_tracking(p)
    p.add_argument("--experiment", help="experiment to look a run name up in (default: sslpipe)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.config.schema import TrackingConfig
    from pipelines.eval.encoders import register_checkpoint

    experiment = args.experiment or TrackingConfig.experiment
    uri = flags.tracking_uri(args)
    emit(register_checkpoint(args.run_ref, args.step, uri, experiment, args.name or ""), None)
    return 0
