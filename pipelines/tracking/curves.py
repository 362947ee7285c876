"""The run's curves as PNG artifacts: loss per step (and per epoch), kNN top-1 over training.

Drawn from the run's own MLflow metric history, one value per step (the surviving run's value
where a resume re-logged rolled-back steps), so the pictures match what the UI shows.
"""

import tempfile
from pathlib import Path

from mlflow import MlflowClient

from pipelines.tracking.runs import absolute_uri, latest_per_step


def _series(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    history = latest_per_step(client.get_metric_history(run_id, key))
    return [m.step for m in history], [m.value for m in history]


def plot_curves(run_id: str, tracking_uri: str) -> list[str]:
    """Draw ``loss_curve.png`` and ``knn_curve.png`` (when there is anything to draw) into the
    run's ``curves/`` artifacts; return the artifact paths written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    client = MlflowClient(absolute_uri(tracking_uri))
    written = []
    with tempfile.TemporaryDirectory() as d:
        steps, loss = _series(client, run_id, "loss")
        epoch_steps, epoch_loss = _series(client, run_id, "epoch_loss")
        if steps or epoch_steps:
            fig, ax = plt.subplots(figsize=(6, 4))
            if steps:
                ax.plot(steps, loss, lw=1, alpha=0.6, label="loss (logged steps)")
            if epoch_steps:
                ax.plot(epoch_steps, epoch_loss, "o-", label="epoch mean")
            ax.set(xlabel="optimizer step", ylabel="loss", title="training loss")
            ax.legend()
            fig.tight_layout()
            fig.savefig(Path(d) / "loss_curve.png", dpi=100)
            plt.close(fig)
            written.append("curves/loss_curve.png")
        knn_steps, knn = _series(client, run_id, "monitor_knn_top1")
        final_steps, final = _series(client, run_id, "knn_top1")
        if knn_steps or final_steps:
            fig, ax = plt.subplots(figsize=(6, 4))
            if knn_steps:
                ax.plot(knn_steps, knn, "o-", label="online monitor (subset)")
            if final_steps:
                ax.plot(final_steps, final, "s", ms=8, label="final (full eval split)")
            ax.set(xlabel="optimizer step", ylabel="kNN top-1", title="weighted kNN top-1")
            ax.legend()
            fig.tight_layout()
            fig.savefig(Path(d) / "knn_curve.png", dpi=100)
            plt.close(fig)
            written.append("curves/knn_curve.png")
        if written:
            client.log_artifacts(run_id, d, "curves")
    return written
