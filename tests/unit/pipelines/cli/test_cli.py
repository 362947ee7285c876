"""The command line: help is light, errors are one line with exit code 2 (usage) or 1, never a
traceback unless SSLPIPE_TRACEBACK=1."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main

REPO = Path(__file__).resolve().parents[4]
COMMANDS = ["pretrain", "shard", "eval", "embed", "register", "methods", "tune", "survey"]


def test_help_of_every_command_imports_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from pipelines.cli import main\n"
        f"for cmd in [[]] + [[c] for c in {COMMANDS!r}]:\n"
        "    try:\n"
        "        main(cmd + ['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_has_help_and_renders():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "%%" not in text, name
        for action in p._actions:
            assert action.help, f"sslpipe {name} {action.option_strings or action.dest}: no help"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("sslpipe ")


def test_missing_config_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["pretrain", "--config", str(missing), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: No such file or directory" in err and "Traceback" not in err


def test_data_that_is_not_a_shard_set_fails_before_anything_starts(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path / "none"), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"--data {tmp_path / 'none'}: no _manifest.json" in err
    assert "sslpipe shard SRC" in err  # says how to make one


def test_unexpected_errors_are_one_line_unless_asked(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert main(["pretrain", "--config", str(bad), "--print-config"]) == 2
    assert "not valid YAML" in capsys.readouterr().err

    def boom(args):
        raise RuntimeError("the worker group died")

    monkeypatch.setattr("pipelines.cli.methods.run", boom)
    assert main(["methods"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "sslpipe methods: the worker group died",
        "  (SSLPIPE_TRACEBACK=1 shows the traceback)",
    ]
    monkeypatch.setenv("SSLPIPE_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="worker group died"):
        main(["methods"])


def test_a_model_looked_up_in_a_store_that_does_not_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = ["eval", "knn", "--model", "models:/sslpipe-byol@best", "--data", str(tmp_path)]
    assert main(model) == 1
    err = capsys.readouterr().err
    assert f"sslpipe eval: no MLflow store at {tmp_path / 'mlflow.db'}: the tracking URI " in err
    assert "pass --tracking-uri" in err
    assert main(["register", "run-name", "--step", "5"]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # reading never creates a store


def test_eval_takes_dinos_knn_settings_and_names_a_wrong_section():
    # DINO reports k = 20, T = 0.07; without --set the encoder's logged settings stand
    from pipelines.cli.eval import eval_settings
    from pipelines.config.typed import ConfigError

    base = ["eval", "knn", "--model", "models:/m@best", "--data", "/shards"]
    dino = ["--set", "eval.knn_k=20", "--set", "eval.knn_temperature=0.07"]
    settings = eval_settings(build_parser().parse_args([*base, *dino]))
    assert settings == {"knn_k": 20, "knn_temperature": 0.07}
    assert eval_settings(build_parser().parse_args(base)) == {}  # the logged ones stand
    with pytest.raises(ConfigError, match=r"only eval\.\* keys apply here, got \['optim'\]"):
        eval_settings(build_parser().parse_args([*base, "--set", "optim.base_lr=1"]))
    with pytest.raises(ConfigError, match=r"'eval\.knn_k'"):  # checked before anything loads
        eval_settings(build_parser().parse_args([*base, "--set", "eval.knn_k=many"]))


def no_ray(*args, **kwargs):
    raise AssertionError("this command must not start Ray")


@pytest.mark.parametrize("decode_device", ["cpu", "train"])
def test_dry_run_checks_data_model_and_one_step_without_ray(
    tmp_path, monkeypatch, capsys, decode_device
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipelines.cluster.local.start_local_ray", no_ray)
    monkeypatch.setattr("ray.init", no_ray)
    small = ["--set", "data.embedded_train_per_class=8", "--set", "data.embedded_test_per_class=2"]
    small += ["--set", f"views.decode_device={decode_device}"]
    assert main(["pretrain", "--dry-run", "--batch-size", "16", *small]) == 0
    out = capsys.readouterr().out
    assert "sslpipe pretrain --dry-run: ok" in out
    assert "80 images, 10 classes" in out and "5 per epoch, 40 in all" in out  # 80 // 16 × 8
    assert "global (8, 2, 3, 32, 32) (of a worker batch of 8)" in out  # one worker's share
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sslpipe-runs").exists()


def test_shard_of_a_missing_source_fails_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pipelines.cli.shard._start_ray", no_ray)
    assert main(["shard", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert f"SRC {tmp_path / 'none'}: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_run_ends_in_a_few_lines_with_the_way_on(tmp_path):
    from pipelines.config.layers import load_config
    from pipelines.train.trainer import failure_report

    class WorkerGroupError(RuntimeError):
        """Ray Train's error names each failed worker's exception by rank."""

    run_dir = tmp_path / "runs" / "simclr-x"
    (run_dir / "checkpoint_000000046").mkdir(parents=True)
    (run_dir / "checkpoint_000000023").mkdir()
    (run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    cfg = load_config(overrides={"train": {"name": "simclr-x"}})  # the laptop: max_failures 0
    worker = WorkerGroupError("Training failed: a worker died\n<traceback lines>")
    worker.worker_failures = {1: MemoryError("out of memory in forward")}
    text = failure_report(cfg, worker, 57, str(run_dir))
    lines = text.splitlines()
    assert lines[0] == "worker 1 failed: MemoryError: out of memory in forward"
    assert f"last checkpoint: {run_dir}/checkpoint_000000046" in text
    assert "resume with: sslpipe pretrain --resume simclr-x" in text
    assert "--set train.max_failures=3" in text and "last step shown: 57" in text
    assert len(lines) <= 7 and "traceback" not in text


def test_workers_flag_takes_a_count_or_an_elastic_range(capsys):
    from pipelines.cli import flags
    from pipelines.cli.pretrain import profile_line
    from pipelines.config.layers import load_config

    args = build_parser().parse_args(["pretrain", "--workers", "2-4", "--batch-size", "48"])
    cfg = load_config(overrides=flags.overrides(args))
    assert cfg.train.workers == (2, 4) and cfg.train.batch_size == 48
    assert "batch 48, 8 epochs, 2-4 workers (elastic)" in profile_line(cfg)
    assert (
        flags.overrides(build_parser().parse_args(["pretrain", "--workers", "3"]))["train"][
            "workers"
        ]
        == 3
    )
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["pretrain", "--workers", "two"])
    assert exit_info.value.code == 2
    assert "--workers: expected N or MIN-MAX, got 'two'" in capsys.readouterr().err


def test_leave_keeps_what_a_normal_exit_does(tmp_path):
    """``leave`` skips only the interpreter's teardown: the exit code, buffered output, exit
    hooks, a non-daemon thread's last write and an executor's queued task all survive it."""
    code = (
        "import atexit, sys, threading, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from pathlib import Path\n"
        "from pipelines.cli import leave\n"
        f"out = Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (out / 'hook').write_text('ran'))\n"
        "def late(): time.sleep(0.5); (out / 'thread').write_text('done')\n"
        "threading.Thread(target=late).start()\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(lambda: (time.sleep(0.3), (out / 'task').write_text('done')))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "leave(3)\n"
        "print('never')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 3, out.stderr[-3000:]
    assert out.stdout == "buffered, no newline"
    assert (tmp_path / "hook").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "task").read_text() == "done"
