"""The ``sslpipe tune`` and ``sslpipe survey`` subcommands (parsers and handlers)."""

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pipelines.cli import flags
from pipelines.cluster.jobs import add_cluster_arguments
from pipelines.config.layers import read_yaml, recipe_names
from pipelines.config.typed import ConfigError


def _common(p: argparse.ArgumentParser, epochs: bool = True) -> None:
    flags.add_config(p)
    flags.add_data(p)
    flags.add_training(p, epochs)
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials at once; each takes workers × cpus_per_worker + data.decode_tasks CPUs "
        "(see tuning/README.md)",
    )
    p.add_argument("--name", help="sweep name (default: tune-<method>-<time> / survey-<time>)")
    add_cluster_arguments(p)
    flags.add_summary(p)
    flags.add_verbose(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "tune",
        help="sweep hyperparameters with Ray Tune (FIFO, ASHA, PBT)",
        description="Each trial is a pretraining run (same training function as `pretrain`), "
        "tracked as an MLflow child run of the sweep's parent run; the best trial's encoder is "
        "registered. Spaces: tuning/spaces/*.yaml.",
    )
    t.add_argument("--method", choices=recipe_names(), help="method key (default: the config's)")
    t.add_argument(
        "--space",
        help="search space: a YAML file (choice, uniform, loguniform, grid) or a shipped one by "
        "name: clustering, context_based, contrastive, contrastive_generative, "
        "feature_decorrelation, masked_image_modeling, self_distillation, self_distillation_mim",
    )
    t.add_argument("--num-samples", type=int, default=1, help="samples (× each grid point)")
    t.add_argument(
        "--scheduler",
        choices=["fifo", "asha", "pbt"],
        default="fifo",
        help="fifo: every trial runs to the end; asha: stop weak trials early; "
        "pbt: population-based training",
    )
    t.add_argument("--metric", default="knn_top1", help="knn_top1 (default), loss, images_per_sec")
    t.add_argument(
        "--mode",
        choices=["max", "min"],
        default="max",
        help="whether --metric is better high or low",
    )
    t.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a stop")
    t.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep 1/rf per rung")
    t.add_argument("--pbt-interval", type=int, default=1, help="PBT: epochs between exploits")
    t.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="SWEEP_DIR",
        help="continue an interrupted sweep (its directory; bare: the newest under --storage)",
    )
    _common(t)
    t.set_defaults(run=cmd_tune)
    s = sub.add_parser(
        "survey",
        help="run methods side by side at one budget; kNN + linear probe report",
        description="Every chosen method at the same epoch budget on the same data, as Tune "
        "trials; writes survey.md (table) and survey.png (bar chart) to --out and to the "
        "survey's MLflow parent run.",
    )
    s.add_argument("--methods", default="all", help="all, or KEY,KEY,... (see sslpipe methods)")
    s.add_argument("--budget", type=int, required=True, help="epochs per method")
    s.add_argument("--out", default="survey", help="output folder (default: ./survey)")
    _common(s, epochs=False)
    s.set_defaults(run=cmd_survey)


def start_ray(address: str | None, overrides: dict[str, Any], max_concurrent: int) -> None:
    """Join the cluster named by ``--address`` or start a local Ray with room for
    ``max_concurrent`` trials' workers plus their data tasks."""
    import ray

    if ray.is_initialized():
        return
    if address:
        # submit_or_connect has joined the cluster already; reached only if it could not
        raise ConfigError(f"--address {address}: could not join this cluster")
    else:
        from pipelines.cluster.local import start_local_ray
        from pipelines.config.layers import load_config
        from pipelines.train.batching import worker_range

        cfg = load_config(overrides.get("method"), None, overrides)
        # workers, decode tasks, quarter-CPU read tasks (see tuning/README.md)
        workers = worker_range(cfg.train.workers)[1]
        per_trial = workers * cfg.train.cpus_per_worker + cfg.data.decode_tasks + 0.5
        start_local_ray(max(int(per_trial * max_concurrent + 0.999), os.cpu_count() or 1))


def on_cluster(args: argparse.Namespace) -> int | None:
    """``--address http://...``: submit this command as a Ray job and return its exit code;
    ``auto`` / ``ray://`` (or running as a job's entrypoint): join that cluster, return None."""
    from pipelines.cluster.jobs import PROJECT_ROOT, submit_or_connect

    address = args.address or ""
    space = getattr(args, "space", None)
    if address.startswith(("http://", "https://")) and space and Path(space).is_file():
        # a file travels in the job's working_dir; a shipped space's name resolves there
        inside = Path(space).resolve().is_relative_to(PROJECT_ROOT) and Path.cwd() == PROJECT_ROOT
        if not inside:
            raise ConfigError(
                f"--space {space}: with --address {address} the space file travels in the job's "
                f"working_dir: put it inside {PROJECT_ROOT} and run from there"
            )
    outputs = None
    if address.startswith(("http://", "https://")):
        # a sweep writes its trials' checkpoints and MLflow runs where a pretrain run would
        from pipelines.config.layers import load_config

        cfg = load_config(getattr(args, "method", None), None, flags.overrides(args))
        outputs = {"--storage": cfg.train.storage, "--tracking-uri": cfg.tracking.uri}
        if getattr(args, "out", None):  # survey's report folder
            outputs["--out"] = args.out
    return submit_or_connect(args, args.argv, None, outputs)


def _emit(summary: dict[str, Any], path: str | None) -> None:
    from pipelines.cluster.jobs import emit_summary

    emit_summary(summary)
    text = json.dumps(summary, indent=2, default=str)
    print(text, flush=True)
    if path:
        Path(path).write_text(text)


def cmd_tune(args: argparse.Namespace) -> int:
    from tuning.sweep import SweepOptions, latest_sweep, resume_sweep, run_sweep

    exit_code = on_cluster(args)
    if exit_code is not None:
        return exit_code
    overrides = flags.overrides(args)
    if args.resume:
        from pipelines.config.layers import load_config
        from pipelines.train.trainer import storage_root

        sweep_dir = args.resume
        if sweep_dir == "latest":
            sweep_dir = latest_sweep(storage_root(load_config(args.method, None, overrides)))
        start_ray(args.address, overrides, args.max_concurrent)
        _emit(resume_sweep(sweep_dir), args.summary_json)
        return 0
    if not args.space:
        raise ConfigError("sslpipe tune needs --space SPACE.yaml (examples: tuning/spaces/)")
    from tuning.space import load_space, space_path

    args.space = space_path(args.space)
    load_space(args.space)  # malformed: fail before Ray starts
    opts = SweepOptions(
        method=args.method,
        overrides=overrides,
        space=read_yaml(args.space),
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        metric=args.metric,
        mode=args.mode,
        max_concurrent=args.max_concurrent,
        name=args.name or "",
        grace_epochs=args.grace_epochs,
        reduction_factor=args.reduction_factor,
        pbt_interval=args.pbt_interval,
    )
    from tuning.sweep import prepare

    prepare(opts)  # every check that can fail, before Ray starts
    start_ray(args.address, overrides, args.max_concurrent)
    _emit(run_sweep(opts), args.summary_json)
    return 0


def cmd_survey(args: argparse.Namespace) -> int:
    from tuning.survey import SurveyOptions, run_survey, survey_spec

    exit_code = on_cluster(args)
    if exit_code is not None:
        return exit_code
    opts = SurveyOptions(
        methods=args.methods,
        budget=args.budget,
        overrides=flags.overrides(args),
        out=args.out,
        max_concurrent=args.max_concurrent,
        name=args.name or "",
    )
    survey_spec(opts)  # unknown methods or unlabeled data fail before Ray starts
    start_ray(args.address, opts.overrides, args.max_concurrent)
    summary = run_survey(opts)
    print(Path(summary["table"]).read_text(), flush=True)
    from pipelines.cluster.jobs import emit_summary

    emit_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str))
    return 0
