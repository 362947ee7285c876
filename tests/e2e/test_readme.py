"""Every command README.md shows, run as written in one empty directory (HOME too, so
``~/photos`` is this test's), in the README's order, scaled down only through the command's own
flags (appended, so they win). Each command must appear in README.md verbatim."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import jpeg

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SMALL = [  # the built-in dataset at a tenth of its size: the same code, less waiting
    "--set",
    "data.embedded_train_per_class=64",
    "--set",
    "data.embedded_test_per_class=16",
]
NOISE = ("TrainingReport", "Execution plan", "WARNING", "\x1b", "\r", "Traceback")


def in_readme(command: str) -> str:
    assert command in README, f"README.md no longer shows: {command}"
    return command


def run(workdir: Path, command: str, *scale: str) -> subprocess.CompletedProcess:
    """``command`` as README.md shows it, then ``scale``, through the installed entry point."""
    argv = shlex.split(os.path.expanduser(command.replace("~", str(workdir))))
    assert argv[0] == "sslpipe"
    env = {**os.environ, "HOME": str(workdir)}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv[1:], *scale],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    for noise in NOISE:
        assert noise not in out.stdout + out.stderr, (command, noise)
    return out


def result(out: subprocess.CompletedProcess) -> dict:
    """The JSON document an eval command prints after its phase lines."""
    return json.loads(out.stdout[out.stdout.index("{") :])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An empty directory with a small photo folder in class folders under ~/photos."""
    root = tmp_path_factory.mktemp("readme")
    for split, per_class in (("train", 150), ("val", 30)):
        for c, name in enumerate(("cat", "dog")):
            folder = root / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.jpg").write_bytes(jpeg(48, 40, seed=1000 * c + i))
    return root


@pytest.fixture(scope="module")
def first_run(workdir) -> dict:
    """`make run` is `sslpipe pretrain`: the quick start, at one epoch."""
    out = run(workdir, in_readme("sslpipe pretrain"), "--epochs", "1", *SMALL)
    assert (
        "sslpipe pretrain: done" in out.stdout
        and "registered model  models:/sslpipe-simclr/1" in out.stdout
    )
    assert re.search(r"^sslpipe: epoch 1/1  step \d+/\d+", out.stdout, re.M)
    name = re.search(r"run id +\w+ +\((\S+)\)", out.stdout).group(1)
    step = int(re.search(r"checkpoint_(\d+)", out.stdout).group(1))
    log = re.search(r"^sslpipe: log: (\S+)$", out.stdout, re.M).group(1)
    return {"name": name, "step": step, "log": log}


def test_quick_start_keeps_ray_and_mlflow_in_the_log_file(first_run):
    text = Path(first_run["log"]).read_text()
    assert "mlflow" in text  # what the console did not show is kept there


def test_methods(workdir):
    out = run(workdir, in_readme("sslpipe methods"))
    assert len(out.stdout.splitlines()) == 20


def test_own_images_shard_check_and_train(workdir):
    run(workdir, in_readme("sslpipe shard ~/photos/train shards/train"))
    run(workdir, in_readme("sslpipe shard ~/photos/val shards/val"))
    base = "sslpipe pretrain --data shards/train --eval-data shards/val --profile laptop"
    out = run(workdir, in_readme(f"{base} --dry-run"))
    assert "300 images, 2 classes" in out.stdout
    out = run(workdir, in_readme(f"{base} --epochs 20"), "--epochs", "1")
    assert "kNN top-1" in out.stdout
    assert out.stdout.startswith("sslpipe: simclr, laptop profile")
    byol = "sslpipe pretrain --method byol --data shards/train"
    out = run(workdir, in_readme(f"{byol} --print-config"))
    assert "profile: paper" in out.stdout and "name: resnet50" in out.stdout
    out = run(workdir, in_readme(f"{byol} --profile laptop --set optim.base_lr=0.5 --dry-run"))
    assert "--dry-run: ok" in out.stdout


def test_the_registry_commands(workdir, first_run):
    best = "models:/sslpipe-simclr@best"
    out = run(workdir, in_readme(f"sslpipe eval knn --model {best}"))
    assert 0.0 <= result(out)["top1"] <= 1.0
    shards = "--data shards/train --eval-data shards/val"
    out = run(
        workdir,
        in_readme(f"sslpipe eval linear --model {best} {shards}"),
        "--set",
        "eval.linear_epochs=2",
    )
    assert 0.0 <= result(out)["top1"] <= 1.0
    run(
        workdir,
        in_readme(f"sslpipe embed --model {best} --data shards/val --out embeddings.parquet"),
    )
    assert (workdir / "embeddings.parquet").stat().st_size > 0
    in_readme("sslpipe register RUN --step N")
    run(workdir, f"sslpipe register {first_run['name']} --step {first_run['step']}")


def test_the_python_api_and_loading_snippets(workdir, first_run):
    api = re.search(r"```python\n(from pipelines import.*?)```", README, re.S).group(1)
    scaled = api.replace(
        '{"train": {"epochs": 2}}',
        '{"train": {"epochs": 1}, "data": {"embedded_train_per_class": 64, '
        '"embedded_test_per_class": 16}}',
    )
    assert scaled != api
    load = re.search(r"```python\n(import mlflow\n.*?)```", README, re.S).group(1)
    code = scaled + load + "assert features.shape[0] == 8 and torch.isfinite(features).all()\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_sweeps_and_surveys(workdir, first_run):
    tune = "sslpipe tune --method simclr --space contrastive --num-samples 4 --scheduler asha"
    run(workdir, in_readme(f"{tune} --epochs 8"), "--num-samples", "1", "--epochs", "1", *SMALL)
    out = run(
        workdir,
        in_readme("sslpipe survey --methods simclr,byol --budget 8"),
        "--budget",
        "1",
        *SMALL,
    )
    assert (workdir / "survey" / "survey.md").exists() and "byol" in out.stdout
