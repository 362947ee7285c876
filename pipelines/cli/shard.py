"""``sslpipe shard``: images in any of the input formats to verified Parquet shards."""

import argparse
import os
import sys

from pipelines.cli import flags
from pipelines.cluster.checks import Demand
from pipelines.cluster.jobs import add_cluster_arguments, submit_or_connect
from pipelines.config.typed import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pipelines.data.shard.inputs import FORMATS

    s = sub.add_parser(
        "shard",
        help="turn images into Parquet shards (or --verify a shard set)",
        description="SRC: an ImageFolder directory, a tar of class folders, ImageNet's train "
        "tar of per-class tars, WebDataset .tar shards (a directory or shards-{000..099}.tar), "
        "or a .csv/.parquet list of (uri, label). SRC and DEST: local paths or s3://bucket/prefix. "
        "DEST must be new or empty, and must neither be, lie in, nor hold SRC. An interrupted "
        "run, re-run with the same arguments, finishes the job.",
    )
    s.add_argument("paths", nargs="+", metavar="SRC DEST", help="source and shard directory")
    s.add_argument("--verify", action="store_true", help="re-check DEST's checksums and counts")
    s.add_argument("--format", choices=FORMATS, default="auto", help="input format (auto)")
    s.add_argument("--target-mb", type=float, help="target shard file size (default 256 MB)")
    s.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="re-encode images whose longer side exceeds this (e.g. 512 for 224-pixel training; "
        "decode cost falls with the pixel count); default: keep the original bytes",
    )
    s.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    s.add_argument(
        "--bad-images",
        choices=["skip", "strict"],
        default="skip",
        help="undecodable records: skip and count them (default), or stop at the first",
    )
    s.add_argument(
        "--max-record-mb",
        type=float,
        default=64,
        help="a record (image file, tar member) larger than this is bad: skipped unread and "
        "counted, or the stop of a --bad-images strict run (default 64)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel Ray tasks (default: the CPU count); 0 runs in this process without Ray",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="shuffles per-file sources across shards, so shards mix classes; -1 keeps order",
    )
    s.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (MinIO...); default: $AWS_ENDPOINT_URL"
    )
    add_cluster_arguments(s)
    flags.add_verbose(s)
    s.set_defaults(run=run)


def _start_ray(address: str | None, workers: int) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:  # submit_or_connect joins a cluster first; this is the fallback
        ray.init(address=address)
    else:
        from pipelines.cluster.local import start_local_ray

        start_local_ray(max(1, workers))


def check_source(src: str) -> None:
    """A local SRC that does not exist is a usage error, found before Ray starts. (Patterns
    such as ``shards-{000..099}.tar`` and remote sources are checked when planned.)"""
    if "://" not in src and not any(c in src for c in "{*?[") and not os.path.exists(src):
        raise ConfigError(f"SRC {src}: no such file or directory")


def run(args: argparse.Namespace) -> int:
    from pipelines.data.decode import BadImageError
    from pipelines.data.shard.writer import DEFAULT_TARGET_BYTES, ShardOptions

    dest = args.paths[-1] if len(args.paths) == 2 and not args.verify else ""
    demands = [Demand("shard task", {"CPU": 1.0})]
    exit_code = submit_or_connect(args, args.argv, demands, {"DEST": dest})
    if exit_code is not None:  # ran as a Ray job
        return exit_code
    if args.verify:
        if len(args.paths) != 1:
            raise ConfigError("sslpipe shard --verify takes one argument: the shard directory")
        return _verify(args)
    if len(args.paths) != 2:
        raise ConfigError("sslpipe shard takes SRC and DEST (or --verify DEST)")
    src, dest = args.paths
    if args.max_record_mb <= 0:
        raise ConfigError(f"--max-record-mb {args.max_record_mb}: must be positive")
    options = ShardOptions(
        target_bytes=int(args.target_mb * 2**20) if args.target_mb else DEFAULT_TARGET_BYTES,
        max_side=args.max_side,
        quality=args.quality,
        bad_images=args.bad_images,
        format=args.format,
        seed=None if args.seed < 0 else args.seed,
        max_record_bytes=int(args.max_record_mb * 2**20),
        endpoint=args.endpoint_url or "",
    )
    from pipelines.data.shard.destination import check_destination
    from pipelines.data.shard.job import shard

    check_source(src)
    check_destination(src, dest, options.endpoint)  # refusals come before Ray starts
    if args.workers > 0:
        _start_ray(args.address, args.workers)

    try:
        report = shard(src, dest, options, workers=args.workers)
    except BadImageError as e:
        print(f"sslpipe shard: {e}", file=sys.stderr)
        print(f"sslpipe shard: re-run the same command to resume into {dest}", file=sys.stderr)
        return 1
    m = report.manifest
    if report.already_complete:
        print(f"sslpipe shard: {dest} is already complete ({m.total_rows} images); nothing to do")
        return 0
    resumed = f", resumed {report.resumed} of {report.units} units" if report.resumed else ""
    print(
        f"sslpipe shard: {m.total_rows} images in {len(m.files)} files, "
        f"{len(m.class_names)} classes, {m.bad_records} bad records skipped -> {dest}{resumed}"
    )
    for key in m.bad_keys[:20]:
        print(f"  skipped: {key}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.workers > 0:
        _start_ray(args.address, args.workers)
    from pipelines.data.shard.verify import verify

    dest = args.paths[0]
    report = verify(dest, args.endpoint_url or "", workers=args.workers)
    for note in report.notes:
        print(f"  note: {note}")
    for problem in report.problems:
        print(f"  FAILED: {problem}")
    verdict = "OK" if report.ok else f"{len(report.problems)} problems"
    print(f"sslpipe shard --verify: {dest}: {report.files} files, {report.rows} rows: {verdict}")
    return 0 if report.ok else 1
