"""The run's curves, read from the figures' data: the kNN curve's reference lines (random init,
chance) and a lone point drawn as a marker."""

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.tracking.curves import knn_figure, loss_figure, plot_curves


@pytest.fixture
def run(tmp_path) -> tuple[MlflowClient, str, str]:
    """A run that logged one loss value, one monitor kNN and the final kNN of both encoders."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("curves")).info.run_id
    metrics = [
        Metric("loss", 4.2, 0, 1),
        Metric("monitor_knn_top1", 0.40, 0, 5),
        Metric("knn_top1", 0.62, 0, 10),
        Metric("knn_top1_random_init", 0.25, 0, 10),
    ]
    client.log_batch(run_id, metrics=metrics)
    return client, run_id, uri


def lines_by_label(fig) -> dict:
    (ax,) = fig.axes
    return {line.get_label(): line for line in ax.get_lines()}


def test_knn_curve_shows_random_init_and_chance_as_horizontal_lines(run):
    client, run_id, _ = run
    lines = lines_by_label(knn_figure(client, run_id, num_classes=10))
    assert set(lines) == {
        "online monitor (subset)",
        "final (full eval split)",
        "random init (0.250)",
        "chance (1/10)",
    }
    for label, level in (("random init (0.250)", 0.25), ("chance (1/10)", 0.1)):
        line = lines[label]
        assert list(line.get_ydata()) == [level, level]
        assert list(line.get_xdata()) == [0, 1]  # axes coordinates: across the whole plot
    assert list(lines["final (full eval split)"].get_ydata()) == [0.62]
    # with the classes unknown there is no chance line
    assert "chance (1/10)" not in lines_by_label(knn_figure(client, run_id))


def test_a_lone_point_is_drawn_as_a_marker(run):
    client, run_id, _ = run
    (line,) = lines_by_label(loss_figure(client, run_id)).values()
    assert (list(line.get_xdata()), list(line.get_ydata())) == ([1], [4.2])
    assert line.get_marker() not in ("None", "", None)
    monitor = lines_by_label(knn_figure(client, run_id))["online monitor (subset)"]
    assert monitor.get_marker() == "o"


def test_plot_curves_logs_both_pictures(run):
    client, run_id, uri = run
    assert plot_curves(run_id, uri, 10) == ["curves/loss_curve.png", "curves/knn_curve.png"]
    logged = sorted(f.path for f in client.list_artifacts(run_id, "curves"))
    assert logged == ["curves/knn_curve.png", "curves/loss_curve.png"]
