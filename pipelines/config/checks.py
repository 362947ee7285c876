"""Cross-field rules of a run configuration, checked once the sections are typed.

Each error names the dotted key at fault and what it must agree with, so a bad config fails at
``sslpipe pretrain`` instead of deep inside a Ray task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config.typed import ConfigError
from pipelines.data.stream.view_config import RECIPE_GROUPS
from pipelines.train.batching import plan_for, workable_batch, worker_range

if TYPE_CHECKING:
    from pipelines.config.schema import Config, TrainConfig


def check_training(cfg: Config) -> None:
    """Cross-field rules of the train/optim/tracking sections, named by key."""
    t = cfg.train
    low, _ = worker_range(t.workers)
    for key, value in (
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.accumulate_steps", t.accumulate_steps),
        ("train.workers", low),
        ("train.log_every_steps", t.log_every_steps),
        ("train.checkpoint_every_epochs", t.checkpoint_every_epochs),
        ("train.keep_checkpoints", t.keep_checkpoints),
    ):
        if value < 1:
            raise ConfigError(f"config key '{key}': must be at least 1, got {value}")
    for key, value in (
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.drain_check_steps", t.drain_check_steps),
        ("train.resize_check_seconds", t.resize_check_seconds),
    ):
        if value < 0:
            raise ConfigError(f"config key '{key}': must not be negative, got {value}")
    check_workers(t)
    for key, custom in (
        ("data.task_resources", cfg.data.task_resources),
        ("train.worker_resources", t.worker_resources),
    ):
        for name, amount in custom.items():
            if name in ("CPU", "GPU", "memory"):
                raise ConfigError(
                    f"config key '{key}.{name}': CPUs and GPUs come from train.cpus_per_worker "
                    "and train.use_gpu (data tasks take 1 CPU); list custom resources here"
                )
            if amount <= 0:
                raise ConfigError(f"config key '{key}.{name}': must be positive, got {amount}")
    for alias in cfg.tracking.aliases:
        if alias in ("latest", "best"):
            raise ConfigError(
                f"config key 'tracking.aliases': '{alias}' is not settable; 'best' is set by kNN "
                "top-1 and MLflow reserves 'latest' (use models:/NAME/latest for the newest)"
            )


def check_decode_device(cfg: Config) -> None:
    """Views decoded on the training device are random crops whose photometric step follows
    them there (``device_views.py``)."""
    views = cfg.views
    if views.decode_device != "train":
        return
    if views.recipe != "crops":
        raise ConfigError(
            f"config key 'views.decode_device': 'train' decodes random crops only; the "
            f"{views.recipe} recipe cuts its views on the CPU side (set views.decode_device: cpu)"
        )
    if views.augment_device != "train":
        raise ConfigError(
            "config key 'views.augment_device': must be 'train' with views.decode_device: train "
            "(the views are first made on the training device, so colour and blur run there too)"
        )


def check_workers(t: TrainConfig) -> None:
    """``train.workers`` is a count or a [min, max] range, and the global batch has a cut at
    every worker count Ray Train may start (``pipelines.train.batching``)."""
    low, high = worker_range(t.workers)
    if low > high:
        raise ConfigError(
            f"config key 'train.workers': [min, max] with min <= max, got {[low, high]}"
        )
    if t.micro_batch_size and t.accumulate_steps != 1:
        raise ConfigError(
            "config key 'train.micro_batch_size': sets the micro-batches from the worker count; "
            f"leave train.accumulate_steps at 1 (got {t.accumulate_steps}) or set only that"
        )
    failing = []
    for world in range(low, high + 1):
        try:
            plan_for(t, world)
        except ValueError:
            failing.append(world)
    if not failing:
        return
    counts = ", ".join(map(str, failing))
    cut = f" × train.accumulate_steps={t.accumulate_steps}" if t.accumulate_steps > 1 else ""
    if low == high:
        raise ConfigError(
            f"config key 'train.batch_size': {t.batch_size} must divide evenly into "
            f"train.workers={low}{cut} micro-batches"
        )
    accumulate = 1 if t.micro_batch_size else t.accumulate_steps
    raise ConfigError(
        f"config key 'train.batch_size': {t.batch_size} does not divide evenly over {counts} "
        f"workers{cut}, which train.workers={[low, high]} lets Ray Train start with; every "
        "worker takes the same share of the global batch. Use a batch that does, e.g. "
        f"{workable_batch(t.batch_size, low, high, accumulate)}, or a range whose every count "
        "divides it"
    )


def check_recipe(cfg: Config) -> None:
    """A pretext recipe's view group must exist with its fixed view count, and its settings
    must agree with the method's (a mismatch would otherwise fail deep inside a Ray task)."""
    views = cfg.views
    if views.recipe not in RECIPE_GROUPS:
        return
    name, count = RECIPE_GROUPS[views.recipe]
    group = views.groups.get(name)
    if group is None or group.count != count:
        raise ConfigError(
            f"config key 'views.groups.{name}.count': the {views.recipe} recipe writes {count} "
            f"views to group '{name}', got {'no such group' if group is None else group.count}"
        )
    if views.recipe == "jigsaw":
        jig = views.jigsaw
        if jig.cell < group.size + 2 * jig.channel_jitter:
            raise ConfigError(
                f"config key 'views.jigsaw.cell': {jig.cell} cannot hold a tile of "
                f"{group.size} plus a channel jitter of {jig.channel_jitter} on each side"
            )
        if not 2 <= jig.permutations <= 362880:
            raise ConfigError(
                f"config key 'views.jigsaw.permutations': {jig.permutations} is not in [2, 9!]"
            )
        classes = getattr(cfg.method_args, "num_permutations", jig.permutations)
        if classes != jig.permutations:
            raise ConfigError(
                f"config key 'method_args.num_permutations': {classes} must equal "
                f"views.jigsaw.permutations = {jig.permutations}"
            )
