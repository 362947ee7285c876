"""The flags several commands share, defined once, and the config overrides they make.

Nothing here imports torch, Ray or MLflow: ``sslpipe --help`` stays light.
"""

import argparse
from typing import Any

TRACKING_HELP = "MLflow tracking URI (default: sqlite:///mlflow.db in this directory)"
SET_HELP = "override one config key, e.g. --set optim.base_lr=0.5 (repeatable)"


def add_config(p: argparse.ArgumentParser, set_help: str = SET_HELP) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", help="YAML file laid over the method's recipe")
    add_set(p, set_help)


def add_set(p: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_data(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--data`` and ``--eval-data``: shard directories, local or s3://."""
    p.add_argument(
        "--data",
        required=required,
        help="shard directory from `sslpipe shard`, local or s3://"
        + ("" if required else " (default: the embedded dataset)"),
    )
    p.add_argument(
        "--eval-data",
        help="labeled held-out shards for kNN (default: the embedded test split, or a fixed "
        "10%% of --data's rows by key hash)",
    )


def add_training(p: argparse.ArgumentParser, epochs: bool = True) -> None:
    """The flags that size a training run: epochs, batch, workers, storage, tracking."""
    if epochs:
        p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="global batch size over all workers")
    p.add_argument(
        "--workers",
        type=worker_count,
        help="Ray Train workers (DDP processes); MIN-MAX (e.g. 4-8) for an elastic run that "
        "goes on with what the cluster holds in that range",
    )
    p.add_argument("--storage", help="checkpoint root: local path or s3://bucket/prefix")
    add_tracking(p)


def worker_count(text: str) -> int | list[int]:
    """``--workers``: ``4``, or ``4-8`` for ``train.workers: [4, 8]``."""
    low, dash, high = text.partition("-")
    try:
        return [int(low), int(high)] if dash else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None


def add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help=TRACKING_HELP)


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray's and MLflow's own logs live (otherwise they go to the run's log file)",
    )


def add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary to this file")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of ``--config``, ``--set`` and the sizing flags, in that order; a
    flag not given (or not defined on this command) overrides nothing."""
    from pipelines.config.layers import deep_merge, parse_set, read_yaml

    get = lambda name: getattr(args, name, None)  # noqa: E731
    flags = {
        "data": {"path": get("data"), "eval_path": get("eval_data")},
        "train": {
            "epochs": get("epochs"),
            "batch_size": get("batch_size"),
            "workers": get("workers"),
            "storage": get("storage"),
        },
        "tracking": {"uri": get("tracking_uri")},
    }
    flags = {s: {k: v for k, v in d.items() if v is not None} for s, d in flags.items()}
    flags = {s: d for s, d in flags.items() if d}
    base = read_yaml(args.config) if get("config") else {}
    return deep_merge(deep_merge(base, parse_set(get("set") or [])), flags)


def tracking_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri`` or the default, as an absolute URI."""
    from pipelines.config.schema import TrackingConfig
    from pipelines.tracking.runs import absolute_uri

    return absolute_uri(args.tracking_uri or TrackingConfig.uri)
