"""Streaming keeps memory bounded: a shard set ~5× the Ray object store is streamed into
training views by a Ray with a deliberately small store, with nothing spilled to disk.

The small-store Ray cannot be the session's shared one, so it runs in its own process
(tests/stream_probe.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.data.shard.writer import Row, write_shards
from tests.images import jpeg

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STORE_MIB = 80  # Ray's floor is 75 MiB
ROWS = 4000


def test_a_dataset_five_times_the_object_store_streams_without_spilling(tmp_path):
    # ImageNet-sized records (~100 KB): a small JPEG followed by padding decoders ignore
    image = jpeg(64, 64)
    rows = (Row(f"r{i:05d}", image + os.urandom(100_000), i % 3, 64, 64) for i in range(ROWS))
    write_shards(rows, str(tmp_path / "shards"), ["a", "b", "c"], target_bytes=16 * 2**20)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "stream_probe.py"),
            str(tmp_path / "shards"),
            str(STORE_MIB),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dataset_mib"] > 4.5 * STORE_MIB
    assert result["rows"] == ROWS  # every image streamed through
    assert result["spilled_mib"] == 0, result  # never more in flight than the store holds
    assert 0 < result["peak_mib"] <= STORE_MIB, result
