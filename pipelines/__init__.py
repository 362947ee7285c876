"""sslpipe's pipelines: data, training, evaluation and tracking around ``ssl_models``.

The Python API, for notebooks and scripts::

    from pipelines import load_config, pretrain

    cfg = load_config("byol", overrides={"train": {"epochs": 2}})
    summary = pretrain(cfg)  # the dict ``sslpipe pretrain --summary-json`` writes
    summary["metrics"]["knn_top1"], summary["registered_model_uri"]

Both names load on first use, so importing a submodule (the decode tasks do) stays light.
"""

from typing import Any

__all__ = ["load_config", "pretrain"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from pipelines.config.layers import load_config

        return load_config
    if name == "pretrain":
        from pipelines.train.trainer import pretrain

        return pretrain
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
