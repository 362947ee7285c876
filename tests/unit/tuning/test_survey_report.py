"""The survey's method list, Markdown table and chart; tune/survey on a cluster address."""

import pytest

from pipelines.config.typed import ConfigError
from tuning.survey import bar_chart, markdown_table, method_list


def test_method_list_all_and_keys():
    from ssl_models.registry import METHODS

    assert method_list("all") == list(METHODS)
    assert method_list("byol, simclr,byol") == ["byol", "simclr"]
    with pytest.raises(ConfigError, match=r"--methods: \['simclr3'\] not in"):
        method_list("simclr,simclr3")


def test_table_has_one_row_per_method_with_percentages(tmp_path):
    rows = [
        {
            "method": "simclr",
            "family": "contrastive",
            "knn_top1": 0.4567,
            "linear_top1": 0.5,
            "images_per_sec": 123.4,
            "wall_seconds": 61.2,
        },
        {"method": "mae", "family": "masked image modeling", "error": "failed"},
    ]
    table = markdown_table(rows, 3).splitlines()
    assert table[0] == "# sslpipe survey: 2 methods, 3 epochs each"
    assert table[4] == "| simclr | contrastive | 45.7 | 50.0 | 123 | 61 |"
    assert table[5] == "| mae (failed) | masked image modeling | — | — | — | — |"
    bar_chart(rows, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("command", ["tune", "survey"])
def test_tune_and_survey_go_through_the_cluster_entry_point(command, monkeypatch, tmp_path):
    """An unreachable Jobs address fails in the probe, naming it, before anything starts; before
    that, relative outputs (the defaults) are refused: the job would write them into its copy."""
    from pipelines.cli import build_parser
    from pipelines.cluster import checks as cluster_checks
    from pipelines.cluster import jobs
    from tuning.commands import on_cluster

    monkeypatch.setattr(cluster_checks, "PROBE_SECONDS", 1.0)
    address = "http://127.0.0.1:9"  # the discard port: nothing answers HTTP there
    argv = [command, "--address", address]
    space = ["--space", "tuning/spaces/contrastive.yaml"]
    argv += space if command == "tune" else ["--budget", "1"]
    monkeypatch.chdir(jobs.PROJECT_ROOT)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with pytest.raises(ConfigError, match=r"--storage 'sslpipe-runs', --tracking-uri") as e:
        on_cluster(args)
    assert ("--out 'survey'" in str(e.value)) is (command == "survey")
    argv += ["--storage", str(tmp_path / "runs"), "--tracking-uri", "http://mlflow:5000"]
    argv += ["--out", str(tmp_path / "survey")] if command == "survey" else []
    args = build_parser().parse_args(argv)
    args.argv = argv
    with pytest.raises(cluster_checks.ClusterError, match=f"--address {address}"):
        on_cluster(args)


def test_a_space_file_outside_the_project_cannot_travel_with_a_job(tmp_path):
    from pipelines.cli import build_parser
    from tuning.commands import on_cluster

    space = tmp_path / "space.yaml"
    space.write_text("optim.base_lr: {loguniform: [0.1, 1.0]}\n")
    argv = ["tune", "--address", "http://127.0.0.1:9", "--space", str(space)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    with pytest.raises(ConfigError, match="travels in the job's working_dir"):
        on_cluster(args)


def test_cli_knows_tune_and_survey():
    from pipelines.cli import build_parser

    args = build_parser().parse_args(
        ["tune", "--space", "s.yaml", "--scheduler", "asha", "--max-concurrent", "3"]
    )
    assert (args.command, args.scheduler, args.max_concurrent) == ("tune", "asha", 3)
    args = build_parser().parse_args(["tune", "--resume"])
    assert args.resume == "latest"
    args = build_parser().parse_args(["survey", "--methods", "simclr,byol", "--budget", "2"])
    assert (args.methods, args.budget) == ("simclr,byol", 2)


@pytest.mark.parametrize(
    "space, named",
    [
        ("method_args.temprature: {choice: [0.1, 0.2]}\n", "'method_args.temprature'"),
        ("optim.base_lr: {uniform: 0.1}\n", "'optim.base_lr'"),
    ],
)
def test_tune_cli_names_the_bad_key_before_ray_starts(tmp_path, capsys, space, named):
    import ray

    from pipelines.cli import main

    ray.shutdown()  # an earlier test module may have left one running: this command must not
    path = tmp_path / "space.yaml"
    path.write_text(space)
    argv = ["tune", "--method", "simclr", "--space", str(path), "--storage", str(tmp_path)]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not ray.is_initialized()
