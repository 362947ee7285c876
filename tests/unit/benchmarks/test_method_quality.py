"""benchmarks/method_quality.py: its configs and its table (no training)."""

from pathlib import Path

from benchmarks.method_quality import method_config, table
from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import to_dict


def test_cifar_config_is_the_laptop_profile_with_a_data_path(tmp_path: Path) -> None:
    # with a data path, load_config drops the laptop profile; the benchmark must keep it so the
    # CIFAR-10 figures use the same 32-pixel recipe as the embedded ones
    cfg = method_config("byol", tmp_path / "cifar10", "n", None, ("/s/train", "/s/test"))
    laptop = load_config("byol", overrides=parse_set(["train.name=n"]))
    assert (cfg.data.path, cfg.data.eval_path) == ("/s/train", "/s/test")
    assert to_dict(cfg)["backbone"] == to_dict(laptop)["backbone"]
    assert to_dict(cfg)["method_args"] == to_dict(laptop)["method_args"]
    assert cfg.views.groups["global"].size == 32
    assert cfg.train.epochs == laptop.train.epochs == 8
    assert not cfg.tracking.register


def test_epochs_override_and_embedded_default(tmp_path: Path) -> None:
    cfg = method_config("rotnet", tmp_path / "embedded", "n", 3, None)
    assert cfg.train.epochs == 3 and cfg.data.path == ""
    assert cfg.train.storage == str(tmp_path / "embedded" / "runs")


def test_overrides_apply_last_over_the_profile(tmp_path: Path) -> None:
    sets = ["method_args.temperature=0.1", "method_args.queue_length=0"]
    cfg = method_config("swav", tmp_path / "embedded", "n", None, None, sets)
    profile = method_config("swav", tmp_path / "embedded", "n", None, None)
    assert (cfg.method_args.temperature, cfg.method_args.queue_length) == (0.1, 0)
    assert (profile.method_args.temperature, profile.method_args.queue_length) == (0.2, 1024)
    assert cfg.method_args.num_prototypes == profile.method_args.num_prototypes == 100


def result_row(**fields) -> dict:
    """A finished method's result row on dataset "d" (kNN 0.25 after 184 steps in 1.5 min)."""
    row = {
        "method": "a",
        "dataset": "d",
        "family": "f",
        "backbone": "b",
        "epochs": 8,
        "steps": 184,
        "wall_seconds": 90.0,
        "knn_top1": 0.25,
    }
    return row | fields


def test_table_rows_margin_sign_and_failures() -> None:
    rows = [
        result_row(knn_top1_random_init=0.3, margin=-0.05),
        {"method": "x", "dataset": "d", "family": "f", "error": "RuntimeError('boom')"},
        {"method": "other", "dataset": "e", "family": "f", "error": "not this dataset"},
    ]
    md = table(rows, "d", "note")
    assert "| a | f | b | 8 | 184 | 1.5 min | 0.250 | 0.300 | -0.050 |" in md
    assert "failed: RuntimeError('boom')" in md
    assert "other" not in md


def test_prepare_cifar_takes_the_first_names_per_class_and_reuses_its_shards(tmp_path: Path):
    import io
    import random
    import tarfile

    import pyarrow.parquet as pq

    from benchmarks.quality_data import prepare_cifar
    from pipelines.data.manifest import read_manifest
    from tests.images import jpeg

    names = [f"{s}/{c}/{i:04d}.jpg" for s in ("train", "test") for c in "abc" for i in range(4)]
    random.Random(0).shuffle(names)  # stream order differs from name order
    tarball = tmp_path / "cifar.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for seed, name in enumerate(names):
            data = jpeg(8, 8, seed=seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    train, test = prepare_cifar(tarball, tmp_path / "cache", 2, 1)
    for path, per_class in ((train, 2), (test, 1)):
        manifest, _, _ = read_manifest(path)
        assert manifest.class_names == ["a", "b", "c"] and manifest.total_rows == 3 * per_class
        keys = sorted(
            k for f in manifest.files for k in pq.read_table(f"{path}/{f.name}")["key"].to_pylist()
        )
        assert keys == [f"{c}/{i:04d}.jpg" for c in "abc" for i in range(per_class)]
    tarball.unlink()  # the shards exist: nothing is read again
    assert prepare_cifar(tarball, tmp_path / "cache", 2, 1) == (train, test)


def test_cifar_test_sample_takes_the_first_test_images_per_class_in_stream_order(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from benchmarks.quality_data import cifar_test_sample

    def png(value: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (32, 32), (value, 0, 255 - value)).save(out, format="PNG")
        return out.getvalue()

    members = [  # (name, red value); "b" comes first in the stream, "a" sorts first
        ("train/b/0000.png", 1),
        ("test/b/0007.png", 10),
        ("test/a/0003.png", 20),
        ("test/b/0001.png", 30),
        ("test/a/0000.png", 40),
        ("test/b/0002.png", 50),
    ]
    tarball = tmp_path / "cifar.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, value in members:
            data = png(value)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    x, labels = cifar_test_sample(tarball, 2)
    assert x.shape == (4, 3, 32, 32) and labels.tolist() == [1, 0, 1, 0]
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [10, 20, 30, 40]
    assert (x[:, 2, 0, 0] * 255).round().tolist() == [245, 235, 225, 215]


def test_random_init_seed_zero_is_the_runs_own_baseline(tmp_path: Path) -> None:
    # the seeded baselines must include exactly the encoder the pipeline scores as random init
    import torch

    from benchmarks.baselines import random_init_encoders
    from pipelines.eval.encoders import encoders_from_state

    x = torch.rand(2, 3, 32, 32)
    for method in ("simmim", "dino", "moco_v2"):
        cfg = method_config(method, tmp_path / "embedded", "n", None, None)
        seeded = {k: e.eval() for k, e in random_init_encoders(cfg, 2).items()}
        own = encoders_from_state(cfg, None, random_init=True)["random_init"].eval()
        with torch.no_grad():
            assert torch.equal(own(x), seeded["seed0"](x)), method
            assert not torch.allclose(own(x), seeded["seed1"](x)), method


def test_table_adds_the_seeded_baseline_columns() -> None:
    row = result_row(
        knn_top1_random_init=0.2,
        margin=0.05,
        random_init_seeds=[0.2, 0.22, 0.24],
        random_init_mean=0.22,
        margin_vs_mean=0.03,
    )
    md = table([row], "d", "note")
    assert "| seeds | random init mean (range) | margin vs mean |" in md
    assert "| 0.200 | +0.050 | 3 | 0.220 (0.200-0.240) | +0.030 |" in md


def test_embedded_gray_is_the_embedded_set_without_hue(tmp_path: Path) -> None:
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from benchmarks.quality_data import prepare_embedded_gray
    from pipelines.data.manifest import read_manifest
    from pipelines.data.synthetic import generate_rows

    train, test = prepare_embedded_gray(tmp_path, 3, 1)
    assert read_manifest(train)[0].total_rows == 30 and read_manifest(test)[0].total_rows == 10

    rows = pq.read_table(sorted(Path(train).glob("*.parquet"))[0]).to_pylist()
    originals = {r.key: r for r in generate_rows(3, 0)}
    for row in rows[:5]:
        gray = np.asarray(Image.open(io.BytesIO(row["image"])), dtype=np.int16)
        assert gray.shape == (32, 32, 3)
        assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1  # equal channels (JPEG rounding)
        assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 1
        source = originals[row["key"]]
        assert row["label"] == source.label
        # the same picture: its luma, within JPEG error
        luma = np.asarray(Image.open(io.BytesIO(source.image)).convert("L"), dtype=np.int16)
        assert np.abs(gray[..., 0] - luma).mean() < 3
    # a second call reuses the shards
    stamp = Path(train, "_manifest.json").stat().st_mtime_ns
    prepare_embedded_gray(tmp_path, 3, 1)
    assert Path(train, "_manifest.json").stat().st_mtime_ns == stamp


def test_plain_init_baseline_only_for_vits_without_it(tmp_path: Path) -> None:
    # layer scale (DINOv2 1e-5) leaves the random ViT's [CLS] nearly input-independent, and
    # BEiT's std-0.02 init leaves the random blocks nearly the identity; the plain baseline is the
    # same blocks with Xavier weights and full residual branches
    import torch

    from benchmarks.baselines import plain_changes, plain_vit, random_init_encoders

    cfg = method_config("dino_v2", tmp_path / "embedded", "n", None, None)
    plain = plain_vit(cfg)
    assert cfg.backbone.vit.layer_scale == 1e-5 and plain.backbone.vit.layer_scale == 0.0
    assert plain.backbone.vit.dim == cfg.backbone.vit.dim and plain.method == cfg.method
    assert plain_changes(cfg) == "layer scale 1e-05 → 0"
    assert plain_vit(plain) is None
    beit = method_config("beit", tmp_path / "e", "n", None, None)
    assert (beit.backbone.vit.init, plain_vit(beit).backbone.vit.init) == ("beit", "xavier")
    assert plain_vit(beit).backbone.vit.pos_embed == beit.backbone.vit.pos_embed == "relative"
    assert plain_changes(beit) == "layer scale 0.1 → 0, init beit → xavier"
    assert plain_vit(method_config("mae", tmp_path / "e", "n", None, None)) is None
    assert plain_vit(method_config("dino", tmp_path / "e", "n", None, None)) is None

    x = torch.rand(16, 3, 32, 32)

    def mean_cosine(c) -> float:
        encoder = random_init_encoders(c, 1)["seed0"].eval()
        with torch.no_grad():
            f = torch.nn.functional.normalize(encoder(x), dim=1)
        sim = f @ f.T
        return float((sim.sum() - sim.diagonal().sum()) / (16 * 15))

    assert mean_cosine(cfg) > 0.99 > 0.9 > mean_cosine(plain)


def test_table_adds_the_plain_init_baseline_columns() -> None:
    row = result_row(
        knn_top1_random_init=0.18,
        margin=0.13,
        random_init_seeds=[0.18],
        random_init_mean=0.18,
        margin_vs_mean=0.13,
        plain_init="layer scale 1e-05 → 0",
        random_init_plain=0.297,
        margin_vs_plain=0.014,
    )
    resnet = result_row(method="r", knn_top1_random_init=0.2, margin=0.05)
    md = table([row, resnet], "d", "note")
    assert "| random init plain (Xavier, no layer scale) | margin vs it |" in md
    assert "| 0.180 | +0.130 | 1 | 0.180 (0.180-0.180) | +0.130 | 0.297 | +0.014 |" in md
    assert "| 0.200 | +0.050 | | | | | |" in md  # no seeds, no plain baseline: empty cells
