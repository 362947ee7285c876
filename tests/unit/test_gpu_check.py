"""The GPU check's Python part at toy size on CPU, with ray, mlflow and yaml unimportable (as on
the GPU machine); and the YAML subset reader it relies on, against PyYAML on every recipe."""

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from pipelines import mini_yaml
from tests.unit.test_faults_and_imports import BLOCK

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in resources.files("pipelines").joinpath("configs").iterdir())


def test_gpu_check_runs_every_method_without_ray_mlflow_or_yaml():
    code = BLOCK + (
        "import runpy, sys\n"
        "sys.argv = ['gpu_check', '--tiny', '--device', 'cpu']\n"
        "runpy.run_module('benchmarks.gpu_check', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from ssl_models.registry import METHODS

    table = out.stdout.split("status")[1]
    for key in METHODS:  # every registered method has a row that trained
        (line,) = [row for row in table.splitlines() if row.split()[:1] == [key]]
        assert line.rstrip().endswith("ok"), line
    assert "images/s" in out.stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_mini_yaml_reads_every_packaged_config_as_pyyaml(name):
    text = resources.files("pipelines").joinpath("configs", name).read_text()
    assert mini_yaml.loads(text) == yaml.safe_load(text)


def test_mini_yaml_subset():
    text = """
a: &base
  b: [1, 2.5, 5e-4, 1.0e-6, "x # y", true, null]   # 5e-4 is a string in YAML 1.1
  c:
    - {k: 1, m: [a, b]}
    - name: x
      v: 2
d:
  <<: *base
  e: [0.08,
      1.0]
"""
    assert mini_yaml.loads(text) == yaml.safe_load(text)
    for raw in ("0.5", "3", "[1, 2]", "true", "sgd", "1.0e+30"):
        assert mini_yaml.value(raw) == yaml.safe_load(raw), raw
