"""Sweeps on a local Ray: ASHA stops the weak trial, PBT exploits a checkpoint, the MLflow tree,
the survey's report. Tiny budgets: embedded data, one worker per trial, width-0.25 ResNet."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.config.layers import parse_set

pytestmark = pytest.mark.integration

# temperature 5.0 flattens SimCLR's softmax: its loss stays near log(2N - 1) = 4.84 (measured
# 4.82, 4.82) while 0.2's falls (4.85, 4.67, 4.62), so from epoch 2 on loss ranks them the same
# way on every run
TEMPERATURES = {"method_args.temperature": {"grid": [0.2, 5.0]}}


def tiny(tmp_path: Path, epochs: int, *extra: str) -> dict:
    return parse_set(
        [
            "backbone.width=0.25",
            "method_args.proj_hidden_dim=64",
            "train.batch_size=64",
            f"train.epochs={epochs}",
            "train.workers=1",
            "train.cpus_per_worker=0.5",  # 2 trials on 4 CPUs: room for their data tasks
            f"train.storage={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "data.embedded_train_per_class=13",  # 130 images: 2 steps of 64 per epoch
            "data.embedded_test_per_class=3",
            f"data.cache_dir={tmp_path.parent / 'tune-data'}",
            "eval.knn_k=10",
            "eval.linear_epochs=5",
            *extra,
        ]
    )


def children_of(uri: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sslpipe")
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )


def test_asha_stops_the_weak_trial_and_the_tree_has_one_parent(ray_local, tmp_path):
    from tuning.sweep import SweepOptions, run_sweep

    opts = SweepOptions(
        method="simclr",
        overrides=tiny(tmp_path, 3),
        space=TEMPERATURES,
        scheduler="asha",
        metric="loss",
        mode="min",
        max_concurrent=1,  # the grid's order: 0.2 sets the rung before 5.0 reaches it
        name="asha",
    )
    summary = run_sweep(opts)
    epochs = {t["config"]["method_args.temperature"]: t["epochs"] for t in summary["trials"]}
    # rungs at epochs 1 and 2 (grace 1, factor 2): 5.0 is stopped at one of them, 0.2 runs on
    assert epochs[0.2] == 3 and epochs[5.0] < 3

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = summary["parent_run_id"]
    children = children_of(uri, parent)
    assert len(children) == 2
    assert {c.data.tags["sslpipe.trial_id"] for c in children} == {
        t["trial_id"] for t in summary["trials"]
    }
    stopped = [c for c in children if c.data.tags.get("sslpipe.stopped_early") == "true"]
    assert len(stopped) == 1 and stopped[0].info.status == "KILLED"
    # the parent itself is a root run, and the best (lowest-loss) trial's encoder is registered
    assert "mlflow.parentRunId" not in MlflowClient(uri).get_run(parent).data.tags
    assert summary["best"]["config"]["method_args.temperature"] == 0.2
    assert summary["registered_model_uri"] == "models:/sslpipe-simclr/1"
    version = MlflowClient(uri).get_model_version("sslpipe-simclr", "1")
    assert version.run_id == summary["best"]["run_id"]


@pytest.mark.slow  # 3.5 min on the shared 2-core machine: four worker-group starts
def test_pbt_exploits_the_better_trials_checkpoint(ray_local, tmp_path):
    from tuning.sweep import SweepOptions, run_sweep

    opts = SweepOptions(
        method="simclr",
        overrides=tiny(tmp_path, 2),
        space=TEMPERATURES,
        scheduler="pbt",
        metric="loss",
        mode="min",
        max_concurrent=2,
        name="pbt",
        register=False,
    )
    summary = run_sweep(opts)
    history = {}  # trial id -> its reports, from Tune's per-trial result.json
    for path in Path(summary["storage"]).glob("*/result.json"):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line]
        history[reports[0]["trial_id"]] = reports
    assert len(history) == 2
    exploited = [t for t, reports in history.items() if any(r["exploited"] for r in reports)]
    assert len(exploited) == 1
    second = next(r for r in history[exploited[0]] if r["start_epoch"] == 1)
    # the second interval started from the other trial's epoch-0 checkpoint (2 steps in)
    assert second["exploited"] == 1 and second["resumed_from_step"] == 2
    # the loser is the flat-softmax trial, and its MLflow run names the trial it copied
    assert history[exploited[0]][0]["config"]["method_args.temperature"] == 5.0
    (donor,) = set(history) - set(exploited)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = next(
        c
        for c in children_of(uri, summary["parent_run_id"])
        if c.data.tags["sslpipe.trial_id"] == exploited[0]
    )
    assert child.data.tags["sslpipe.pbt.exploited_at_epoch_1"] == donor


def test_survey_report_lists_every_method(ray_local, tmp_path):
    from tuning.survey import SurveyOptions, run_survey

    out = tmp_path / "survey"
    opts = SurveyOptions(
        methods="simclr,rotnet",
        budget=1,
        overrides=tiny(tmp_path, 1, "eval.knn_random_init=false"),
        out=str(out),
        max_concurrent=2,
        name="survey",
    )
    opts.overrides.pop("method_args")  # each method keeps its own recipe's head
    summary = run_survey(opts)
    table = (out / "survey.md").read_text()
    for method, family in (("simclr", "contrastive"), ("rotnet", "context-based")):
        assert f"| {method} | {family} |" in table
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"simclr", "rotnet"}
    for row in rows.values():
        assert 0.0 <= row["knn_top1"] <= 1.0 and 0.0 <= row["linear_top1"] <= 1.0
        assert row["images_per_sec"] > 0 and row["wall_seconds"] > 0
    assert (out / "survey.png").read_bytes()[:4] == b"\x89PNG"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = {a.path for a in MlflowClient(uri).list_artifacts(summary["parent_run_id"])}
    assert {"survey.md", "survey.png"} <= names
    assert len(children_of(uri, summary["parent_run_id"])) == 2
