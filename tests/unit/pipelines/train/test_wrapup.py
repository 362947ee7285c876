"""The wrap-up made ready during start-up: the final evaluation's views kept, MLflow's model
logging warmed, and nothing lost when preparing fails."""

import logging

from pipelines.config.layers import load_config, parse_set
from pipelines.eval.sets import EvalSplit, HeldViews
from pipelines.train.wrapup import WrapUp, warm_model_logging
from tests.unit.pipelines.eval.test_evaluate import batches_of, small_shards


def config(**eval_settings):
    pairs = ["views.groups.global.size=16"] + [f"eval.{k}={v}" for k, v in eval_settings.items()]
    return load_config("simclr", None, parse_set(pairs))


def test_the_final_evaluations_views_are_kept_at_the_evaluations_side(tmp_path):
    small_shards(tmp_path / "s")
    cfg = config()
    bank, queries = WrapUp(cfg, EvalSplit(str(tmp_path / "s"), "")).views()
    assert isinstance(bank, HeldViews) and isinstance(queries, HeldViews)
    assert bank.columns["image"].shape[1:] == (3, 16, 16)
    assert len(batches_of(queries, 256)) == 1 and len(batches_of(bank, 256)) == 1


def test_nothing_is_kept_without_an_evaluation_or_over_the_in_process_limit(tmp_path):
    small_shards(tmp_path / "s")
    split = EvalSplit(str(tmp_path / "s"), "")
    assert WrapUp(config(), split, evaluate=False).views() is None
    assert WrapUp(config(in_process_rows=3), split).views() is None  # Ray Data's, at the end


def test_a_failed_preparation_leaves_the_work_to_the_end(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="pipelines.train.wrapup"):
        views = WrapUp(config(), EvalSplit(str(tmp_path / "missing"), "")).views()
    assert views is None
    assert "the end does it" in caplog.text


def test_model_logging_is_warmed():
    from mlflow.utils import requirements_utils

    requirements_utils._MODULES_TO_PACKAGES = None  # as in a new process
    warm_model_logging()
    assert "mlflow" in requirements_utils._MODULES_TO_PACKAGES  # the index logging would build
