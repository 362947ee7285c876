"""Fault injection fires once per run; the step function imports without ray or mlflow;
config rules of the training sections."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError
from pipelines.train import faults
from pipelines.train.faults import FaultInjector

REPO = Path(__file__).resolve().parents[4]


def test_fault_fires_once_at_its_step_on_its_rank(tmp_path, monkeypatch):
    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append(sig))
    run_dir = str(tmp_path / "run")
    other = FaultInjector(3, target_rank=1, rank=0, run_dir=run_dir)
    target = FaultInjector(3, target_rank=1, rank=1, run_dir=run_dir)
    for step in range(6):
        other.maybe_fire(step)
        target.maybe_fire(step)
    assert kills == [signal.SIGKILL]
    # the restarted worker finds the marker and does not fire again
    restarted = FaultInjector(3, target_rank=1, rank=1, run_dir=run_dir)
    restarted.maybe_fire(3)
    assert kills == [signal.SIGKILL] and not restarted.armed
    assert not FaultInjector(-1, 0, 0, run_dir).armed


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
"""


def test_step_imports_and_runs_without_ray_or_mlflow():
    code = BLOCK + (
        "import torch\n"
        "from pipelines.config.layers import build_config\n"
        "from pipelines.train.model import build_method\n"
        "from pipelines.train.step import TrainStep, place\n"
        "import pipelines.data.stream.device_views\n"  # the GPU check decodes without Ray too
        "cfg = build_config({'method': 'simclr', 'backbone': {'name': 'resnet18', 'width': 0.125},"
        " 'views': {'groups': {'global': {'size': 16}}}, 'train': {'batch_size': 2, 'workers': 1},"
        " 'method_args': {'proj_hidden_dim': 8, 'proj_dim': 4}})\n"
        "m = place(build_method(cfg), cfg, torch.device('cpu'))\n"
        "s = TrainStep(m, cfg, torch.device('cpu'), 4, 2)\n"
        "r = s({'global': torch.zeros(2, 2, 3, 16, 16, dtype=torch.uint8)}, 0)\n"
        "print('ok', r.loss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok ")


def test_batch_must_split_over_workers_and_micro_batches():
    with pytest.raises(ConfigError, match=r"train.batch_size.*divide evenly"):
        load_config(overrides=parse_set(["train.batch_size=12", "train.accumulate_steps=4"]))
    with pytest.raises(ConfigError, match=r"train.accumulate_steps.*at least 1"):
        load_config(overrides=parse_set(["train.accumulate_steps=0"]))


def test_reserved_aliases_are_refused():
    with pytest.raises(ConfigError, match=r"MLflow reserves 'latest'"):
        load_config(overrides=parse_set(["tracking.aliases=[latest]"]))
    cfg = load_config(overrides=parse_set(["tracking.aliases=[candidate]"]))
    assert cfg.tracking.aliases == ("candidate",)


def test_decode_and_view_code_loads_no_model_code():
    """A Ray Data decode task imports the stream modules: they must not pull in the model zoo
    (ssl_models), MLflow or the training code."""
    code = (
        "import sys\n"
        "import pipelines.data.decode, pipelines.data.stream.views\n"
        "import pipelines.data.stream.pretext_views, pipelines.data.stream.source\n"
        "import pipelines.config.schema\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ssl_models', 'mlflow')\n"
        "               or m.startswith('pipelines.train'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_configs_and_vits_load_no_torchvision_and_resnets_do():
    code = (
        "import sys\n"
        "from pipelines.config.layers import load_config\n"
        "from pipelines.train.model import build_method\n"
        "build_method(load_config('mae'))\n"  # a ViT
        "print('torchvision' in sys.modules)\n"
        "build_method(load_config('simclr'))\n"  # a ResNet, torchvision's blocks
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
