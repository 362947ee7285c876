"""finish_sweep closes the children Tune stopped early, whatever state the race left them in."""

from types import SimpleNamespace

from mlflow import MlflowClient

from tuning.finish import finish_sweep


class Results(list):
    """The few ResultGrid attributes finish_sweep reads."""

    @property
    def num_terminated(self) -> int:
        return sum(r.error is None for r in self)

    @property
    def num_errors(self) -> int:
        return sum(r.error is not None for r in self)


def test_stopped_trials_are_killed_and_tagged_whether_open_or_closed_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("sslpipe")
    parent = client.create_run(exp).info.run_id
    spec = {
        "tracking_uri": uri,
        "experiment": "sslpipe",
        "parent_run_id": parent,
        "storage": str(tmp_path),
        "sweep": "s",
        "method": "simclr",
        "overrides": {"train": {"epochs": 3}},
        "options": {"metric": "loss", "mode": "min", "register": False},
    }
    # trial id -> (run status when Tune returns, epochs done, Tune's error)
    trials = {
        "full": ("FINISHED", 3, None),
        "open": ("RUNNING", 1, None),  # its actor ended at the report
        "raced": ("FAILED", 2, None),  # its own except clause closed it first
        "broken": ("FAILED", 1, RuntimeError("boom")),  # a real failure stays one
    }
    runs, results = {}, Results()
    for trial_id, (status, done, error) in trials.items():
        tags = {"mlflow.parentRunId": parent, "sslpipe.trial_id": trial_id}
        runs[trial_id] = client.create_run(exp, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(runs[trial_id], status)
        metrics = {"trial_id": trial_id, "epoch": done, "loss": 1.0 / done}  # epochs from 1
        results.append(SimpleNamespace(metrics=metrics, config={}, error=error))

    finish_sweep(spec, results)
    got = {
        t: (r.info.status, r.data.tags.get("sslpipe.stopped_early"))
        for t, r in ((t, client.get_run(i)) for t, i in runs.items())
    }
    assert got == {
        "full": ("FINISHED", None),
        "open": ("KILLED", "true"),
        "raced": ("KILLED", "true"),
        "broken": ("FAILED", None),
    }
