"""Typed, frozen run configuration, loaded from YAML layers plus ``--set key=value`` overrides.

Layers, each overriding the one before: the method's recipe (``configs/<method>.yaml``, the paper's
defaults), the embedded-dataset profile when no data path is given (``configs/embedded.yaml``,
sized for a laptop CPU), the user's ``--config`` file, then ``--set`` pairs. Unknown keys and
values of the wrong type are errors that name the dotted key and what is allowed.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.config_checks import check_recipe, check_training
from pipelines.config_layers import deep_merge, embedded_profile, read_yaml, recipe
from pipelines.typed import ConfigError, coerce, from_dict
from ssl_models.backbones.vit import ViTConfig
from ssl_models.registry import METHODS, get_method

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"  # a key of ssl_models.backbones.BACKBONES
    width: float = 1.0  # multiplies every stage's channels; 0.25 makes a CPU-sized ResNet
    cifar_stem: bool = False  # 3×3 stem without max-pool, for images of ~32 pixels
    stem_stride: int = 1  # stride of the CIFAR stem; 2 makes the network 4× cheaper
    vit: ViTConfig = field(default_factory=ViTConfig)  # vit_* only: patch size, overrides, pooling


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour and blur augmentation of one view (SimCLR appendix A; BYOL table 6)."""

    jitter_p: float = 0.8  # probability of colour jitter
    brightness: float = 0.4  # jitter strengths, torchvision ColorJitter semantics
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5  # Gaussian blur probability
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma drawn uniformly in this range
    blur_kernel_fraction: float = 0.1  # kernel side as a fraction of the view size (odd, >= 3)
    solarize_p: float = 0.0  # BYOL's second view uses 0.2
    solarize_threshold: float = 0.5  # pixels above this (in [0, 1]) are inverted


@dataclass(frozen=True)
class ViewGroupConfig:
    """Views of one resolution that share their crop geometry."""

    count: int = 2  # views per image in this group
    size: int = 224  # output side in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    hflip_p: float = 0.5
    # cycled over the group's views: one entry applies to all, two make BYOL's asymmetric pair
    photometric: tuple[PhotometricConfig, ...] = (PhotometricConfig(),)


@dataclass(frozen=True)
class RelativeLocViewsConfig:
    """Patch pairs of relative location (Doersch et al. 2015, section 3); sizes in pixels at the
    patch resolution (the ``patches`` group's size; 96 in the paper)."""

    gap: int = 48  # space between neighbouring patches: no low-level edge continuation
    jitter: int = 7  # each patch moves by up to this much: no straight-line continuation
    drop_channels: bool = True  # keep one random colour channel per patch (chromatic aberration)
    drop_noise: float = 0.01  # std of the noise in the dropped channels, × the kept channel's std


@dataclass(frozen=True)
class JigsawViewsConfig:
    """3×3 jigsaw puzzles (Noroozi & Favaro 2016, section 3); tiles take the ``tiles`` group's
    size (64 in the paper)."""

    cell: int = 75  # side of each grid cell; the tile is cut at a random place inside it
    permutations: int = 1000  # size of the permutation set: the number of classes
    permutation_seed: int = 0  # the set is chosen deterministically from this seed
    # "average": the paper's Algorithm 1 (largest mean Hamming distance to the chosen set);
    # "maximin": the largest minimum distance first, then the paper's criterion (same mean)
    selection: Literal["average", "maximin"] = "average"
    channel_jitter: int = 2  # shift each colour channel by up to this much: chromatic aberration
    grayscale_p: float = 0.3  # whole images turned grey, so colour alone cannot place tiles


@dataclass(frozen=True)
class ViewsConfig:
    # how views are cut from an image: random crops per group, or a pretext task's views plus
    # its targets (pipelines/data/pretext_views.py)
    recipe: Literal["crops", "rotation", "relative_loc", "jigsaw"] = "crops"
    groups: dict[str, ViewGroupConfig] = field(
        default_factory=lambda: {"global": ViewGroupConfig()}
    )
    relative_loc: RelativeLocViewsConfig = field(default_factory=RelativeLocViewsConfig)
    jigsaw: JigsawViewsConfig = field(default_factory=JigsawViewsConfig)
    # where colour and blur run: on the CPU side inside Ray Data, or batched on the train device
    augment_device: Literal["cpu", "train"] = "train"
    draft_decode: bool = True  # let PIL decode JPEGs at reduced size when the crop shrinks anyway
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation on the training device
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # shard directory (local or s3://); empty means the embedded dataset
    eval_path: str = ""  # labeled held-out shards for kNN; empty: the embedded test split, or a
    #   deterministic 10% of the training rows when training on user data
    cache_dir: str = "sslpipe-data"  # where the embedded dataset is generated, once
    embedded_train_per_class: int = 600  # embedded dataset size (10 classes)
    embedded_test_per_class: int = 100
    s3_endpoint: str = ""  # S3-compatible endpoint (MinIO...); empty: $AWS_ENDPOINT_URL or AWS
    shuffle_seed: int = 0  # per-epoch file order derives from this
    interleave_files: int = 4  # files each read task mixes row group by row group: a local
    #   shuffle buffer of that many row groups (~16 MB each), free for the training workers
    decode_tasks: int = 1  # Ray Data tasks decoding and cropping in parallel
    decode_batch_size: int = 64  # images per map_batches call
    bad_images: Literal["skip", "strict"] = "skip"  # skip and count undecodable images, or stop
    # custom Ray resources every data task (read, decode, eval views) asks for, e.g. {data: 0.01}:
    # only nodes advertising them run decoding (infra/ gives the CPU group `data`)
    task_resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "lars"
    base_lr: float = 0.3  # learning rate at a global batch of 256; scaled linearly with batch
    weight_decay: float = 1e-6
    momentum: float = 0.9  # SGD and LARS momentum
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017)
    warmup_epochs: float = 10.0  # linear warmup from 0, then cosine decay
    final_lr_ratio: float = 0.0  # cosine ends at base_lr × this
    clip_grad: float = 0.0  # max global gradient norm; 0 disables
    # clip_grad bounds each parameter tensor's gradient norm on its own instead of the global
    # norm (DINO's and iBOT's reference clip_gradients)
    clip_grad_per_parameter: bool = False
    exclude_bias_and_norm: bool = True  # no weight decay or LARS adaptation on them
    # cosine from weight_decay to this over the run (DINO: 0.04 -> 0.4); negative: constant
    weight_decay_end: float = -1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256  # global batch per optimizer step, split evenly over workers
    accumulate_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    workers: int = 2  # Ray Train workers (one DDP process each)
    cpus_per_worker: float = 1.0  # leave CPUs for Ray Data besides the train workers
    # custom Ray resources each train worker asks for besides CPU/GPU, e.g. {train: 1}: workers
    # start only on nodes advertising them (infra/ gives the GPU group `train`)
    worker_resources: dict[str, float] = field(default_factory=dict)
    use_gpu: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    sync_batchnorm: bool = False  # BN statistics over the global batch (GPU; torch has no CPU one)
    torch_threads: int = 1  # intra-op threads per CPU worker; more oversubscribes small machines
    channels_last: bool = True  # NHWC convolutions: about 2× faster on CPU, preferred by GPUs
    seed: int = 0
    log_every_steps: int = 10  # metrics to MLflow every N optimizer steps
    checkpoint_every_epochs: int = 1  # checkpoint at the end of every N-th epoch (and the last)
    checkpoint_every_steps: int = 0  # also every N optimizer steps, mid-epoch; 0: epoch ends only
    keep_checkpoints: int = 2  # the last K checkpoints are kept, older ones deleted
    # worker-group restarts from the last checkpoint before giving up: preemptible nodes die
    max_failures: int = 3
    storage: str = "sslpipe-runs"  # checkpoint root, local path or s3://
    name: str = ""  # run name; empty: <method>-<timestamp>
    # fault injection for recovery tests: SIGKILL the worker of rank fail_rank when it is about
    # to take optimizer step fail_at_step (0-based), once per run; negative: never
    fail_at_step: int = -1
    fail_rank: int = 0


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200  # weighted kNN (Wu et al. 2018), as DINO's eval_knn
    knn_temperature: float = 0.1
    batch_size: int = 256
    crop_fraction: float = 0.875  # evaluation view: resize to size / this, centre-crop size
    knn_random_init: bool = True  # also evaluate the same architecture at random init
    knn_every_epochs: int = 0  # online kNN monitor during training every K epochs; 0: off
    monitor_bank_rows: int = 2000  # about this many training rows (by key hash) as the bank
    monitor_query_rows: int = 500  # about this many held-out rows as queries
    online_probe: bool = False  # linear classifier on detached features of the training batch
    probe_lr: float = 0.1  # SGD lr of the online probe (solo-learn's online classifier)
    linear_epochs: int = 100  # `sslpipe eval linear`: epochs over the frozen features
    linear_lr: float = 0.1  # full-feature-set SGD with momentum 0.9, cosine to 0
    linear_weight_decay: float = 0.0
    linear_batch_size: int = 256
    image_size: int = 0  # evaluation view side; 0: the global (else the first) view group's
    # sets of at most this many rows are decoded in the evaluating process rather than by Ray
    # tasks, whose start-up costs more than the work on small sets (eval_sets.py); 0: never
    in_process_rows: int = 10000


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # a SQLite file in the working directory, or a server URL
    experiment: str = "sslpipe"
    registered_model: str = ""  # empty: sslpipe-<method>
    register: bool = True
    # extra aliases for the registered version; `best` is managed (kNN) and `latest` is
    # reserved by MLflow (models:/NAME/latest already means the newest version)
    aliases: tuple[str, ...] = ()
    log_checkpoint_artifacts: bool = False  # also copy every checkpoint's files into the run
    flush_seconds: float = 5.0  # metrics leave rank 0 in batches at most this often
    final_flush_seconds: float = 120.0  # the driver retries unsent metrics this long at the end


@dataclass(frozen=True)
class Config:
    method: str = "simclr"  # a key of ssl_models.registry.METHODS
    method_args: Any = None  # the method's own frozen dataclass (e.g. SimCLRConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def build_config(data: dict[str, Any]) -> Config:
    """Typed config from merged plain data; ``method_args`` is typed by the chosen method."""
    data = dict(data)
    method = data.get("method", Config.method)
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"config key 'method': {method!r} is not one of {sorted(METHODS)}")
    method_args = data.pop("method_args", None) or {}
    cfg = from_dict(Config, data)
    args = coerce(method_args, get_method(method).config, "method_args")
    cfg = dataclasses.replace(cfg, method_args=args)
    check_training(cfg)
    check_recipe(cfg)
    return cfg


def load_config(
    method: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Resolve the layers into a typed config (see the module docstring for the order)."""
    user = read_yaml(config_file) if config_file else {}
    user = deep_merge(user, overrides or {})
    chosen = method or user.get("method") or Config.method
    if not isinstance(chosen, str) or chosen not in METHODS:
        raise ConfigError(f"config key 'method': {chosen!r} is not one of {sorted(METHODS)}")
    user["method"] = chosen
    data = recipe(chosen)
    if not user.get("data", {}).get("path") and not data.get("data", {}).get("path"):
        data = deep_merge(data, embedded_profile(chosen, data))
    return build_config(deep_merge(data, user))
