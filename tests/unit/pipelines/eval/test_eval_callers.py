"""Every place that scores frozen features gives the same numbers for the same encoder and data:
the final evaluation of a run, ``sslpipe eval`` on the encoder as registered in MLflow, the
survey on the run's checkpoint, and the benchmarks' random-init baseline."""

import pytest
import torch

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import to_dict


@pytest.fixture
def run(tmp_path):
    """A tiny run's config (embedded data, 10 classes), a checkpoint state that is not the
    random init, and the encoders the run's end evaluates (trained and random init)."""
    from pipelines.eval.encoders import encoders_from_state
    from pipelines.train.model import build_method

    cfg = load_config(
        overrides=parse_set(
            [
                "backbone.width=0.125",
                "method_args.proj_hidden_dim=64",
                "data.embedded_train_per_class=20",
                "data.embedded_test_per_class=5",
                f"data.cache_dir={tmp_path / 'data'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "eval.knn_k=10",
                "eval.linear_epochs=5",
            ]
        )
    )
    torch.manual_seed(123)  # "trained": weights other than the random init's
    state = {"model": build_method(cfg).state_dict(), "config": to_dict(cfg), "step": 0}
    return cfg, state, encoders_from_state(cfg, state)


def test_final_eval_offline_eval_survey_and_baseline_agree(run, tmp_path):
    from benchmarks.baselines import random_init_encoders, run_data_scores
    from pipelines.data.manifest import read_manifest
    from pipelines.eval.encoders import eval_image_size, logged_metadata
    from pipelines.eval.offline import evaluate_registered
    from pipelines.tracking import runs as tracking
    from pipelines.train.checkpoint import save_state
    from pipelines.train.finish import evaluate_and_log
    from pipelines.train.trainer import resolve_data
    from tuning.survey import evaluate_trial

    cfg, state, encoders = run
    split, _ = resolve_data(cfg)
    manifest = read_manifest(split.train)[0]
    run_id = tracking.start_run(cfg, "r")
    final = evaluate_and_log(cfg, split, manifest, state, encoders, run_id, 1.0)
    # the two encoders must score apart, or a mix-up between them would go unseen
    assert final["knn_top1"] != final["knn_top1_random_init"]

    size = eval_image_size(cfg)
    image = torch.rand(2, 3, size, size).numpy()
    meta = logged_metadata(cfg)
    trained = encoders["trained"]
    model_uri = tracking.log_encoder(run_id, cfg.tracking.uri, trained, image, metadata=meta)
    knn = evaluate_registered("knn", model_uri, cfg.tracking.uri, split)  # the logged settings
    linear = evaluate_registered("linear", model_uri, cfg.tracking.uri, split)
    assert knn["top1"] == final["knn_top1"]
    assert (knn["train_rows"], knn["test_rows"]) == (200, 50)  # 20 and 5 per class

    save_state(tmp_path, state)
    survey = evaluate_trial(str(tmp_path))
    assert survey == {"knn_top1": final["knn_top1"], "linear_top1": linear["top1"]}

    baseline = run_data_scores(cfg, random_init_encoders(cfg, 1))  # seed0: the run's init
    assert baseline["seed0"]["knn_top1"] == final["knn_top1_random_init"]


def test_eval_of_the_registered_encoder_reads_back_the_runs_own_knn(run, tmp_path, capsys):
    """`sslpipe eval knn --model <registered>` with no --data and no --set: the embedded set the
    run trained on, the run's eval settings (crop fraction 1.0 and k = 10 here, not the
    defaults 0.875 and 200), the run's own figure."""
    import json
    import time

    from mlflow import MlflowClient

    from pipelines.cli import main
    from pipelines.data.manifest import read_manifest
    from pipelines.tracking import runs as tracking
    from pipelines.tracking.datasets import manifest_digest
    from pipelines.train.finish import evaluate_and_log, finish
    from pipelines.train.trainer import resolve_data

    cfg, state, encoders = run
    split, note = resolve_data(cfg)
    manifest = read_manifest(split.train)[0]
    digest = manifest_digest(manifest)
    tags = {"sslpipe.data": split.train, "sslpipe.data_manifest_sha256": digest}  # as pretrain's
    run_id = tracking.start_run(cfg, "r", tags)
    final = evaluate_and_log(cfg, split, manifest, state, encoders, run_id, 1.0)
    summary = finish(cfg, run_id, state, encoders["trained"], final, note, time.time(), 10)
    assert summary["best_alias"]
    capsys.readouterr()
    version = MlflowClient(cfg.tracking.uri).get_model_version_by_alias("sslpipe-simclr", "best")
    assert version.description.startswith(
        f"**simclr** encoder (Chen et al., ICML 2020; contrastive), trained 8 epochs on "
        f"`{split.train}` (manifest sha256 `{digest}`)."
    )
    assert f"{final['knn_top1']:.3f}" in version.description
    assert version.tags["knn_top1_random_init"] == f"{final['knn_top1_random_init']:.6f}"

    uri = cfg.tracking.uri
    out = tmp_path / "eval.json"
    model = ["eval", "knn", "--model", "models:/sslpipe-simclr@best", "--tracking-uri", uri]
    assert main([*model, "--summary-json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["top1"] == final["knn_top1"]
    assert (result["train_rows"], result["test_rows"]) == (200, 50)
    assert result["split"] == split.note
    assert result["detail"] == ("weighted kNN, k=10, T=0.1, 32-pixel views, crop fraction 1.0")
    assert result["settings"] == "logged with the model"

    assert main([*model, "--set", "eval.crop_fraction=0.875", "--summary-json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["detail"].endswith("crop fraction 0.875")
    assert result["settings"] == "logged with the model; --set eval.crop_fraction"


def test_a_checkpoint_registered_afterwards_carries_its_card_and_settings(run, tmp_path):
    """`sslpipe register RUN --step N`: the version says what it is (kNN not measured yet) and
    carries the run's evaluation settings, so `sslpipe eval` scores it as the run would."""
    from mlflow import MlflowClient

    from pipelines.eval.encoders import logged_model, register_checkpoint
    from pipelines.tracking import runs as tracking
    from pipelines.train.checkpoint import save_state

    cfg, state, _ = run
    uri = cfg.tracking.uri
    (tmp_path / "checkpoint").mkdir()
    save_state(tmp_path / "checkpoint", {**state, "step": 30, "epoch": 3})
    run_id = tracking.start_run(cfg, "later", {"sslpipe.data": "/shards/train"})
    client = MlflowClient(uri)
    for key, value in tracking.checkpoint_tags(str(tmp_path / "checkpoint"), 30, 3).items():
        client.set_tag(run_id, key, value)

    out = register_checkpoint(run_id, 30, uri, cfg.tracking.experiment)
    version = client.get_model_version("sslpipe-simclr", out["registered"].rsplit("/", 1)[1])
    assert "trained 3 epochs on `/shards/train`." in version.description
    assert "kNN top-1 not measured" in version.description
    assert "knn_top1" not in version.tags and version.tags["epochs"] == "3"
    settings = logged_model(out["model_uri"], uri).metadata["sslpipe_eval"]
    assert (settings["crop_fraction"], settings["knn_k"], settings["image_size"]) == (1.0, 10, 32)
