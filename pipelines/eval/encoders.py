"""Encoders in and out of checkpoints and the registry.

``sslpipe register RUN_ID --step N`` turns any checkpoint the run recorded into a registered
model; ``load_registered`` reads any registered encoder back for ``sslpipe eval`` / ``embed``.
"""

import re
from typing import Any

import torch

from pipelines.config.layers import build_config
from pipelines.config.schema import Config
from pipelines.train.checkpoint import load_state_uri
from pipelines.train.model import backbone_spec, build_method
from ssl_models.export import Encoder


def eval_image_size(cfg: Config) -> int:
    """``eval.image_size``, else the global (or first) view group's side."""
    if cfg.eval.image_size:
        return cfg.eval.image_size
    groups = cfg.views.groups
    return (groups.get("global") or next(iter(groups.values()))).size


def logged_metadata(cfg: Config) -> dict[str, Any]:
    """What the logged encoder carries so ``sslpipe eval`` scores it as its run did
    (``MLmodel`` metadata): ``sslpipe_eval``, the run's ``eval`` section with the image side
    resolved (crop fraction, k, T, …); ``sslpipe_embedded``, the embedded set's sizes and
    cache, when the run trained on it (the set ``sslpipe eval`` takes without ``--data``)."""
    from pathlib import Path

    from pipelines.config.typed import to_dict

    out: dict[str, Any] = {
        "sslpipe_eval": {**to_dict(cfg.eval), "image_size": eval_image_size(cfg)}
    }
    if not cfg.data.path:
        out["sslpipe_embedded"] = {
            "train_per_class": cfg.data.embedded_train_per_class,
            "test_per_class": cfg.data.embedded_test_per_class,
            "cache_dir": str(Path(cfg.data.cache_dir).resolve()),
        }
    return out


def encoders_from_state(
    cfg: Config, state: dict[str, Any] | None, random_init: bool | None = None
) -> dict[str, Encoder]:
    """The trained encoder from a checkpoint state and, when ``random_init`` (default:
    ``eval.knn_random_init``), the same architecture at its random initialisation, seeded
    exactly as the training run started."""
    size, spec = eval_image_size(cfg), backbone_spec(cfg)
    out = {}
    if state is not None:
        method = build_method(cfg)
        method.load_state_dict(state["model"])
        out["trained"] = Encoder(method.encoder, cfg.views.mean, cfg.views.std, size, spec)
    if cfg.eval.knn_random_init if random_init is None else random_init:
        torch.manual_seed(cfg.train.seed)
        backbone = build_method(cfg).encoder
        out["random_init"] = Encoder(backbone, cfg.views.mean, cfg.views.std, size, spec)
    return out


def register_checkpoint(
    run_ref: str, step: int, tracking_uri: str, experiment: str, model_name: str = ""
) -> dict[str, Any]:
    """Register the encoder of the checkpoint a run recorded at ``step``: it is logged into the
    same run as ``encoder-step-N`` and registered (default name ``sslpipe-<method>``)."""
    from pipelines.tracking import runs as tracking
    from pipelines.tracking.model_card import model_card

    run = tracking.find_run(tracking_uri, experiment, run_ref)
    records = tracking.checkpoints_of(run)
    kept = ", ".join(str(r["step"]) for r in records if not r.get("pruned")) or "none"
    match = [r for r in records if r["step"] == step]
    if not match:
        raise LookupError(
            f"run {run.info.run_id} recorded no checkpoint at step {step}; it keeps: {kept}"
        )
    uri = match[0]["uri"]
    pruned = (
        f"checkpoint of step {step} is gone: pruned from {uri}, as a run keeps only its latest "
        f"train.keep_checkpoints; the run keeps steps: {kept}"
    )
    if match[0].get("pruned"):
        raise FileNotFoundError(pruned)
    try:
        state = load_state_uri(uri)
    except FileNotFoundError as e:
        raise FileNotFoundError(pruned) from e
    cfg = build_config(state["config"])
    encoder = encoders_from_state(cfg, state, random_init=False)["trained"]
    size = eval_image_size(cfg)
    example = torch.rand(2, 3, size, size).numpy()
    model_uri = tracking.log_encoder(
        run.info.run_id,
        tracking_uri,
        encoder,
        example,
        name=f"encoder-step-{step}",
        metadata=logged_metadata(cfg),
    )
    name = model_name or cfg.tracking.registered_model or f"sslpipe-{cfg.method}"
    text, tags = model_card(cfg, run, state.get("epoch", match[0].get("epoch", 0)), {})
    registered, _ = tracking.register(model_uri, tracking_uri, name, (), None, text, tags)
    return {
        "run_id": run.info.run_id,
        "checkpoint": uri,
        "model_uri": model_uri,
        "registered": registered,
    }


def load_registered(model_uri: str, tracking_uri: str) -> Encoder:
    """Any encoder logged by sslpipe, by ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/ID/encoder``. Only the safetensors format is read (no pickled module, whose loading
    could run code); an encoder logged as a pickle by an older sslpipe is refused with the way
    to re-register it. A model that is not there is a LookupError naming the store searched."""
    return load_logged(model_uri, tracking_uri)[0]


def load_logged(model_uri: str, tracking_uri: str) -> tuple[Encoder, dict[str, Any]]:
    """:func:`load_registered`'s encoder and the metadata it was logged with
    (:func:`logged_metadata`; empty for an encoder logged without it)."""
    import mlflow

    from pipelines.tracking import encoder_model

    model = logged_model(model_uri, tracking_uri)
    flavor = model.flavors.get("python_function", {})
    if flavor.get("loader_module") != encoder_model.__name__:
        raise TypeError(
            f"{model_uri} is not an sslpipe encoder in the safetensors format (a pickled model "
            "is never loaded: it could run code); register the run's checkpoint again with "
            "`sslpipe register RUN --step N`"
        )
    local = mlflow.artifacts.download_artifacts(model_uri)
    encoder = encoder_model.load_encoder(f"{local}/{flavor['data']}").eval()
    return encoder, dict(model.metadata or {})


def logged_model(model_uri: str, tracking_uri: str):
    """The ``MLmodel`` of ``model_uri`` (flavors, metadata) in the store at ``tracking_uri``;
    a LookupError saying which store was searched and what it holds when it is not there (a
    SQLite store that does not exist is not created)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from pipelines.tracking.runs import absolute_uri, require_store

    uri = absolute_uri(tracking_uri)
    require_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        return Model.load(model_uri)
    except MlflowException as e:
        raise LookupError(_not_found(model_uri, uri, e.message)) from e


def _not_found(model_uri: str, uri: str, error: str) -> str:
    """What the store at ``uri`` holds instead of ``model_uri``, and the flag that searches
    another store."""
    from mlflow import MlflowClient

    from pipelines.tracking.secrets import redact_text

    shown = redact_text(uri)
    fix = "pass --tracking-uri with the store the run logged to (the tracking_uri of its summary)"
    match = re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(.+))", model_uri)
    if not match:
        return f"{model_uri} not found at tracking URI {shown} ({error}); {fix}"
    name, alias, version = match.groups()
    client = MlflowClient(uri)
    names = sorted(m.name for m in client.search_registered_models(max_results=100))
    if name not in names:
        held = ", ".join(names) or "none"
        return (
            f"no registered model {name!r} at tracking URI {shown} (registered there: {held}); "
            f"{fix}"
        )
    model = client.get_registered_model(name)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if alias:
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
        return (
            f"registered model {name!r} at {shown} has no alias {alias!r} (its aliases: "
            f"{aliases}; its versions: {', '.join(map(str, versions)) or 'none'}); name a "
            f"version as models:/{name}/N"
        )
    return (
        f"registered model {name!r} at {shown} has no version {version} (its versions: "
        f"{', '.join(map(str, versions)) or 'none'})"
    )
