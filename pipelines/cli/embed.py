"""``sslpipe embed``: a registered encoder's embeddings of a shard set, to Parquet."""

import argparse

from pipelines.cli import flags
from pipelines.cli.eval import EVAL_SET_HELP, MODEL_HELP, emit, eval_settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write the embeddings of a shard set to Parquet")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", required=True, help="shard directory (local or s3://)")
    p.add_argument("--out", required=True, help="OUT.parquet: key, label, embedding")
    flags.add_tracking(p)
    flags.add_set(p, EVAL_SET_HELP)
    flags.add_verbose(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.offline import write_embeddings

    uri = flags.tracking_uri(args)
    emit(write_embeddings(args.model, uri, args.data, args.out, eval_settings(args)), None)
    return 0
