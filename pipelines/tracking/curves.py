"""The run's curves as PNG artifacts: loss per step (and per epoch), kNN top-1 over training.

Drawn from the run's own MLflow metric history, one value per step (the surviving run's value
where a resume re-logged rolled-back steps), so the pictures match what the UI shows. The kNN
curve carries its two references as horizontal lines: the same architecture at random
initialisation (``knn_top1_random_init``: what training must beat) and chance, 1/classes. A
series of one point is drawn as a marker: a line through one point is invisible.
"""

import tempfile
from pathlib import Path

from mlflow import MlflowClient

from pipelines.tracking.runs import absolute_uri, latest_per_step


def _series(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    history = latest_per_step(client.get_metric_history(run_id, key))
    return [m.step for m in history], [m.value for m in history]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def _marker(points: list) -> str | None:
    """A marker for a lone point, which a line alone would not show."""
    return "o" if len(points) == 1 else None


def loss_figure(client: MlflowClient, run_id: str):
    """Loss at the logged steps and the epoch means; None when the run logged neither."""
    plt = _pyplot()
    steps, loss = _series(client, run_id, "loss")
    epoch_steps, epoch_loss = _series(client, run_id, "epoch_loss")
    if not (steps or epoch_steps):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot(steps, loss, lw=1, alpha=0.6, marker=_marker(steps), label="loss (logged steps)")
    if epoch_steps:
        ax.plot(epoch_steps, epoch_loss, "o-", label="epoch mean")
    ax.set(xlabel="optimizer step", ylabel="loss", title="training loss")
    ax.legend()
    fig.tight_layout()
    return fig


def knn_figure(client: MlflowClient, run_id: str, num_classes: int = 0):
    """The online monitor's kNN top-1 over training and the final one, against the random-init
    encoder's and chance (``1 / num_classes``; left out when 0); None when no kNN was logged."""
    plt = _pyplot()
    knn_steps, knn = _series(client, run_id, "monitor_knn_top1")
    final_steps, final = _series(client, run_id, "knn_top1")
    if not (knn_steps or final_steps):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if knn_steps:
        ax.plot(knn_steps, knn, "o-", label="online monitor (subset)")
    if final_steps:
        ax.plot(final_steps, final, "s", ms=8, label="final (full eval split)")
    _, random_init = _series(client, run_id, "knn_top1_random_init")
    if random_init:
        value = random_init[-1]
        ax.axhline(value, ls="--", color="tab:gray", label=f"random init ({value:.3f})")
    if num_classes:
        ax.axhline(1 / num_classes, ls=":", color="tab:red", label=f"chance (1/{num_classes})")
    ax.set(xlabel="optimizer step", ylabel="kNN top-1", title="weighted kNN top-1")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(run_id: str, tracking_uri: str, num_classes: int = 0) -> list[str]:
    """Draw ``loss_curve.png`` and ``knn_curve.png`` (when there is anything to draw) into the
    run's ``curves/`` artifacts; return the artifact paths written. ``num_classes``: of the
    evaluation set, for the kNN curve's chance line (0: not drawn)."""
    plt = _pyplot()
    client = MlflowClient(absolute_uri(tracking_uri))
    figures = {
        "loss_curve.png": loss_figure(client, run_id),
        "knn_curve.png": knn_figure(client, run_id, num_classes),
    }
    written = []
    with tempfile.TemporaryDirectory() as d:
        for name, fig in figures.items():
            if fig is None:
                continue
            fig.savefig(Path(d) / name, dpi=100)
            plt.close(fig)
            written.append(f"curves/{name}")
        if written:
            client.log_artifacts(run_id, d, "curves")
    return written
