"""``sslpipe pretrain``: train an encoder on Ray, track it in MLflow, register it."""

import argparse
import json
from pathlib import Path

from pipelines.cli import flags
from pipelines.cluster.jobs import add_cluster_arguments, submit_or_connect
from pipelines.config.layers import recipe_names
from pipelines.tracking import console
from pipelines.train.batching import describe_workers


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (no arguments: SimCLR on the embedded dataset)",
        description="Pretrain an encoder on Ray, track it in MLflow, register it.",
    )
    p.add_argument("--method", choices=recipe_names(), help="method key (default: simclr)")
    p.add_argument(
        "--profile",
        choices=["laptop", "paper"],
        help="laptop: the CPU-sized profile (small ResNet, 32-pixel views); paper: the method's "
        "published recipe (ResNet-50 or ViT, 224-pixel views). Default: laptop without --data, "
        "paper with it",
    )
    flags.add_data(p)
    flags.add_training(p)
    flags.add_config(p)
    flags.add_summary(p)
    flags.add_verbose(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything in this process and exit: config, data, model, and one training "
        "step on one batch (no Ray, no MLflow)",
    )
    add_cluster_arguments(p)
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (MLflow run id or run name) from its latest checkpoint; "
        "its own config applies, flags and --set override it (e.g. --epochs to extend)",
    )
    p.set_defaults(run=run)


def resume_config(args: argparse.Namespace, overrides: dict):
    """The stopped run's resolved config (its ``config.yaml`` artifact) under the overrides.

    The artifact was redacted (``pipelines.tracking.secrets``): the tracking URI is the live one
    the run was found at (``--tracking-uri`` or the default), never the artifact's, and any
    other redacted value must come again from the command line."""
    import tempfile

    import mlflow

    from pipelines.config.layers import build_config, deep_merge, read_yaml
    from pipelines.config.schema import Config, TrackingConfig
    from pipelines.config.typed import ConfigError
    from pipelines.tracking.runs import absolute_uri, find_run
    from pipelines.tracking.secrets import redacted_keys

    tracking = overrides.get("tracking", {})
    uri = absolute_uri(tracking.get("uri", TrackingConfig.uri))
    experiment = tracking.get("experiment", TrackingConfig.experiment)
    run = find_run(uri, experiment, args.resume)
    with tempfile.TemporaryDirectory() as d:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="config.yaml", dst_path=d, tracking_uri=uri
        )
        data = read_yaml(path)
    if args.method and args.method != data.get("method", Config.method):
        raise ConfigError(f"--method {args.method}: run {args.resume} trained {data['method']}")
    merged = deep_merge(data, overrides)
    merged.setdefault("tracking", {})["uri"] = uri
    missing = redacted_keys(merged)
    if missing:
        sets = " ".join(f"--set {key}=..." for key in missing)
        raise ConfigError(
            f"run {args.resume} logged its config with credentials redacted from "
            f"{', '.join(missing)}: give them again ({sets})"
        )
    return build_config(merged), run.info.run_id


def profile_line(cfg) -> str:
    """Which profile applies and its headline settings, said before anything starts."""
    b, t = cfg.backbone, cfg.train
    net = b.name if b.width == 1 else f"{b.name} ×{b.width:g}"
    sizes = "/".join(str(g.size) for g in cfg.views.groups.values())
    other = "paper" if cfg.profile == "laptop" else "laptop"
    return (
        f"{cfg.method}, {cfg.profile} profile: {net}, {sizes}-pixel views, "
        f"batch {t.batch_size}, {plural(t.epochs, 'epoch')}, {describe_workers(t.workers)} "
        f"(--profile {other} for the {other} settings)"
    )


def dry_run(cfg) -> int:
    from pipelines.train.dry_run import dry_run
    from pipelines.train.trainer import resolve_data

    split, _ = resolve_data(cfg)
    r = dry_run(cfg, split.train)
    views = ", ".join(f"{k} {tuple(v)}" for k, v in r["views"].items())
    print(
        f"sslpipe pretrain --dry-run: ok in {r['seconds']} s\n"
        f"  data              {r['data']}: {r['images']} images, {r['classes']} classes\n"
        f"  steps             {r['steps_per_epoch']} per epoch, {r['total_steps']} in all\n"
        f"  views             {views} (of a worker batch of {r['worker_batch']})\n"
        f"  parameters        {r['trainable_parameters']:,} trainable, "
        f"{r['encoder_parameters']:,} in the encoder\n"
        f"  loss at step 0    {r['loss']:.4f}",
        flush=True,
    )
    return 0


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def check_shards(cfg) -> None:
    """``--data`` / ``--eval-data`` must be shard sets, checked before Ray or MLflow start."""
    from pipelines.config.typed import ConfigError
    from pipelines.data.manifest import read_manifest

    for flag, path in (("--data", cfg.data.path), ("--eval-data", cfg.data.eval_path)):
        if path:
            try:
                read_manifest(path, cfg.data.s3_endpoint or None)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{flag} {path}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from pipelines.cluster.checks import demands_of
    from pipelines.config.layers import dump_yaml, load_config

    overrides = flags.overrides(args)
    if args.profile:
        overrides["profile"] = args.profile
    run_id = None
    if args.resume and args.address and args.address.startswith("http") and not args.print_config:
        # the stopped run's config lives in its MLflow run, which the cluster reaches
        return submit_or_connect(args, args.argv)
    if args.resume:
        cfg, run_id = resume_config(args, overrides)
    else:
        cfg = load_config(args.method, None, overrides)
    if not (args.address or "").startswith("http"):  # a job's paths are the cluster's to read
        check_shards(cfg)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    console.phase(profile_line(cfg))
    if args.dry_run:
        return dry_run(cfg)
    outputs = {"--storage": cfg.train.storage, "--tracking-uri": cfg.tracking.uri}
    exit_code = submit_or_connect(args, args.argv, demands_of(cfg), outputs)
    if exit_code is not None:  # ran as a Ray job
        return exit_code

    from pipelines.cluster.jobs import emit_summary
    from pipelines.train.trainer import pretrain

    summary = pretrain(cfg, resume_run_id=run_id, release_ray=True)
    print(summary_text(summary), flush=True)
    emit_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def summary_text(summary: dict) -> str:
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
        f"  time              {summary['wall_seconds']:.0f} s{time_split(summary)}",
        f"  MLflow UI         {summary['mlflow_ui']}",
    ]
    return "\n".join(lines)


def time_split(summary: dict) -> str:
    """`` (start-up 20 s, training 90 s = 75%, evaluation and registry 10 s)``, or nothing
    without timings."""
    t, wall = summary.get("timings") or {}, summary["wall_seconds"]
    if not t or wall <= 0:
        return ""
    share = t["training_s"] / wall
    return (
        f"  (start-up {t['startup_s']:.0f} s, training {t['training_s']:.0f} s = {share:.0%}, "
        f"evaluation and registry {t['wrap_up_s']:.0f} s)"
    )
