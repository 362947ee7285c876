"""One run, one name: a fresh run never continues another run's checkpoint, and generated names
do not collide."""

import re

import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError


def test_generated_names_differ_within_the_same_second():
    from pipelines.train.trainer import resolved

    cfg = load_config()
    names = {resolved(cfg).train.name for _ in range(20)}
    assert len(names) == 20
    assert all(re.fullmatch(r"simclr-\d{8}-\d{6}-[0-9a-f]{6}", n) for n in names), names


def test_a_fresh_run_under_a_taken_name_is_refused_before_anything_starts(tmp_path):
    from pipelines.train.trainer import pretrain

    storage = tmp_path / "runs"
    (storage / "mine" / "checkpoint_000000004").mkdir(parents=True)
    (storage / "mine" / "checkpoint_000000004" / "state.pt").write_bytes(b"earlier run")
    cfg = load_config(
        overrides=parse_set(
            [
                f"train.storage={storage}",
                "train.name=mine",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"data.path={tmp_path / 'no-shards'}",  # would fail later, were it reached
            ]
        )
    )
    with pytest.raises(ConfigError, match=r"'mine' is taken.*--resume mine"):
        pretrain(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run was made


def test_an_empty_or_absent_run_directory_is_free(tmp_path):
    from pipelines.tracking.run_names import refuse_taken_name

    refuse_taken_name(str(tmp_path), "absent")
    (tmp_path / "empty").mkdir()
    refuse_taken_name(str(tmp_path), "empty")
