"""The end of a sweep on the driver: the children Tune stopped early closed, the best trial's
encoder logged and registered, the parent run ended with a summary."""

from typing import Any

from pipelines.config.layers import load_config
from pipelines.tracking import runs as tracking


def child_runs(spec: dict[str, Any]) -> dict[str, Any]:
    """trial id -> its MLflow child run."""
    from mlflow import MlflowClient

    client = MlflowClient(spec["tracking_uri"])
    exp = client.get_experiment_by_name(spec["experiment"])
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{spec['parent_run_id']}'"
    )
    return {r.data.tags.get("sslpipe.trial_id"): r for r in runs}


def finish_sweep(spec: dict[str, Any], results) -> dict[str, Any]:
    """Close the children Tune stopped early, register the best trial's encoder, end the
    parent run; return the summary."""
    from mlflow import MlflowClient

    o = spec["options"]
    uri = spec["tracking_uri"]
    if results.num_terminated + results.num_errors < len(results):
        # Ctrl-C (or a lost driver): Tune saved its state; the parent run stays open
        print(
            f"sslpipe tune: interrupted; continue with: sslpipe tune --resume {spec['storage']}",
            flush=True,
        )
        return {"sweep": spec["sweep"], "storage": spec["storage"], "interrupted": True}
    client = MlflowClient(uri)
    children = child_runs(spec)
    epochs = load_config(spec["method"], None, spec["overrides"]).train.epochs
    trials = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id", "")
        child = children.get(trial_id)
        # epochs trained: Tune's iteration count restarts with a trial resumed without a Tune
        # checkpoint, the loop's epoch does not
        done = m["epoch"] if "epoch" in m else m.get("training_iteration", 0)  # from 1
        # the scheduler ends the trial function at its report (ASHA also at max_t), before it
        # closes its run, or, racing with that, the function's own except clause closes it
        # FAILED; either way Tune records no error: only a trial short of the budget was
        # stopped early
        stopped = (
            child is not None and r.error is None and child.info.status in ("RUNNING", "FAILED")
        )
        if stopped:
            short = done < epochs
            client.set_terminated(child.info.run_id, "KILLED" if short else "FINISHED")
            if short:
                client.set_tag(child.info.run_id, "sslpipe.stopped_early", "true")
        trials.append(
            {
                "trial_id": trial_id,
                "config": {k: v for k, v in r.config.items()},
                "epochs": done,
                o["metric"]: m.get(o["metric"]),
                "checkpoint_path": m.get("checkpoint_path"),
                "run_id": child.info.run_id if child is not None else None,
                "error": str(r.error) if r.error else None,
            }
        )
    summary: dict[str, Any] = {
        "sweep": spec["sweep"],
        "parent_run_id": spec["parent_run_id"],
        "storage": spec["storage"],
        "trials": trials,
    }
    ok = [t for t in trials if t[o["metric"]] is not None and t["checkpoint_path"]]
    if ok:
        sign = 1 if o["mode"] == "max" else -1
        best = max(ok, key=lambda t: sign * t[o["metric"]])
        summary["best"] = best
        client.set_tag(spec["parent_run_id"], "sslpipe.best_trial", best["trial_id"])
        client.log_metric(spec["parent_run_id"], f"best_{o['metric']}", best[o["metric"]])
        if o.get("register", True) and best["run_id"]:
            summary["registered_model_uri"] = register_best(spec, best)
    tracking.log_dict(spec["parent_run_id"], uri, summary, "summary.json")
    tracking.end_run(spec["parent_run_id"], uri, "FINISHED" if ok else "FAILED")
    return summary


def register_best(spec: dict[str, Any], best: dict[str, Any]) -> str:
    """The best trial's encoder logged to its child run and registered with its config."""
    import torch

    from pipelines.eval.encoders import encoders_from_state, eval_image_size
    from tuning.trial import state_config

    state, cfg = state_config(best["checkpoint_path"])
    encoder = encoders_from_state(cfg, state, random_init=False)["trained"]
    size = eval_image_size(cfg)
    uri = spec["tracking_uri"]
    model_uri = tracking.log_encoder(
        best["run_id"], uri, encoder, torch.rand(2, 3, size, size).numpy()
    )
    name = cfg.tracking.registered_model or f"sslpipe-{cfg.method}"
    knn = best.get("knn_top1")
    registered, _ = tracking.register(model_uri, uri, name, cfg.tracking.aliases, knn)
    from mlflow import MlflowClient

    MlflowClient(uri).set_tag(spec["parent_run_id"], "sslpipe.registered_model", registered)
    return registered
