"""The GPU check's Python part at toy size on CPU, with ray and mlflow unimportable (as on the
GPU machine)."""

import subprocess
import sys
from pathlib import Path

from tests.unit.pipelines.train.test_faults_and_imports import BLOCK

REPO = Path(__file__).resolve().parents[3]


def test_gpu_check_runs_every_method_without_ray_or_mlflow():
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
    assert "decode + SimCLR views" in out.stdout and "decode_device train:" in out.stdout
