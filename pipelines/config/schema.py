"""The run configuration: one frozen dataclass per section, each field with its reason.

``pipelines.config.layers.load_config`` resolves a run's YAML layers into a ``Config``; unknown
keys and values of the wrong type are errors naming the dotted key (``typed.py``), cross-field
rules are in ``checks.py``. ``method_args`` is typed by the chosen method's own dataclass, looked
up only when a config is built, so importing this module loads no model code.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.data.stream.view_config import (  # noqa: F401  (part of the schema)
    IMAGENET_MEAN,
    IMAGENET_STD,
    JigsawViewsConfig,
    PhotometricConfig,
    RelativeLocViewsConfig,
    ViewGroupConfig,
    ViewsConfig,
)


@dataclass(frozen=True)
class ViTConfig:
    """ViT options; ``0`` means the named size's default (tiny/small/base)."""

    patch_size: int = 16  # patch side in pixels: 16 at 224 px (196 tokens), 4 at 32 px (64)
    image_size: int = 0  # side the position embedding is built for; 0: the global views' size
    dim: int = 0  # token width (tiny 192, small 384, base 768)
    depth: int = 0  # transformer blocks (12 for every named size)
    heads: int = 0  # attention heads (3, 6, 12)
    mlp_ratio: float = 4.0  # MLP hidden width / dim
    # fixed 2-D sin-cos as MAE, learned, or "relative": BEiT's shared relative position bias
    pos_embed: Literal["sincos", "learned", "relative"] = "sincos"
    pool: Literal["cls", "mean", "cls_mean"] = "cls"  # backbone(x): CLS, patch mean, or both
    layer_scale: float = 0.0  # residual branch scale init (CaiT); BEiT and CAE use 0.1; 0: off
    drop_path: float = 0.0  # stochastic depth at the last block, linear from 0 at the first
    init: Literal["xavier", "dino", "beit", "simmim"] = "xavier"  # weight init; vit_layers.py


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"  # a key of ssl_models.backbones.BACKBONES
    width: float = 1.0  # multiplies every stage's channels; 0.25 makes a CPU-sized ResNet
    cifar_stem: bool = False  # 3×3 stem without max-pool, for images of ~32 pixels
    stem_stride: int = 1  # stride of the CIFAR stem; 2 makes the network 4× cheaper
    # ResNets: zero the last BatchNorm scale of each residual block so it starts as the identity
    # (Goyal et al. 2017); each recipe sets its reference's choice (torchvision's default: off)
    zero_init_residual: bool = True
    vit: ViTConfig = field(default_factory=ViTConfig)  # vit_* only: patch size, overrides, pooling


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
    # learning rate of the bias and norm groups ÷ the weights' (Barlow Twins: 0.0048 / 0.2);
    # needs exclude_bias_and_norm, which makes those groups
    bias_lr_ratio: float = 1.0
    # cosine from weight_decay to this over the run (DINO: 0.04 -> 0.4); negative: constant
    weight_decay_end: float = -1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    # global batch per optimizer step, split evenly over the workers of the moment (batching.py)
    batch_size: int = 256
    accumulate_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    # instead: cut each worker's share into micro-batches of at most this many rows, so a run
    # that loses workers accumulates more rather than holding more; 0: accumulate_steps rules
    micro_batch_size: int = 0
    # Ray Train workers (one DDP process each); [min, max]: elastic, Ray Train starts with as
    # many as the cluster holds in that range and resizes from the latest checkpoint when nodes
    # go or come
    workers: int | tuple[int, int] = 2
    resize_check_seconds: float = 60.0  # elastic: how often Ray Train looks for more workers
    cpus_per_worker: float = 1.0  # leave CPUs for Ray Data besides the train workers
    # custom Ray resources each train worker asks for besides CPU/GPU, e.g. {train: 1}: workers
    # start only on nodes advertising them (infra/ gives the GPU group `train`)
    worker_resources: dict[str, float] = field(default_factory=dict)
    use_gpu: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    # BatchNorm statistics over the global batch of every worker (torch's SyncBatchNorm on GPU,
    # ssl_models.global_bn on CPU); the recipes whose references do so turn it on; one worker: no-op
    sync_batchnorm: bool = False
    torch_threads: int = 1  # intra-op threads per CPU worker; more oversubscribes small machines
    channels_last: bool = True  # NHWC convolutions: about 2× faster on CPU, preferred by GPUs
    seed: int = 0
    log_every_steps: int = 10  # metrics to MLflow every N optimizer steps (loss: their mean)
    checkpoint_every_epochs: int = 1  # checkpoint at the end of every N-th epoch (and the last)
    checkpoint_every_steps: int = 0  # also every N optimizer steps, mid-epoch; 0: epoch ends only
    keep_checkpoints: int = 2  # the last K checkpoints are kept, older ones deleted
    # worker-group restarts from the last checkpoint before giving up: preemptible nodes die
    # (a drained node's loss is counted apart by Ray Train, without limit)
    max_failures: int = 3
    # every N optimizer steps ask Ray Train whether a node of the run is draining (a spot
    # preemption notice); the first time one is, checkpoint at once; 0: never ask
    drain_check_steps: int = 10
    storage: str = "sslpipe-runs"  # checkpoint root, local path or s3://
    name: str = ""  # run name; empty: <method>-<timestamp>
    # fault injection for recovery tests: SIGKILL the worker of rank fail_rank when it is about
    # to take optimizer step fail_at_step (0-based), once per run; negative: never
    fail_at_step: int = -1
    fail_rank: int = 0


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200  # weighted kNN (Wu et al. 2018), the MoCo demo's k, T (DINO: 20, 0.07)
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
    # which settings lie under the user's: the paper's recipe alone, or the laptop profile over it
    # (CPU-sized network and views); default laptop without data.path, paper with it
    profile: Literal["laptop", "paper"] = "paper"
    method_args: Any = None  # the method's own frozen dataclass (e.g. SimCLRConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
