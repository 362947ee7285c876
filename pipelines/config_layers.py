"""The YAML layers a run's config is resolved from, and ``--set`` pairs as one more layer.

The packaged recipes (``configs/<method>.yaml``) and laptop profile (``configs/embedded.yaml``),
the user's file, and the merge that lays one over another; ``pipelines.config.load_config`` puts
them in order.
"""

from importlib import resources
from pathlib import Path
from typing import Any

from pipelines.typed import ConfigError, to_dict
from ssl_models.registry import get_method


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def safe_load(text: str, document: bool = True) -> Any:
    """PyYAML's ``safe_load``, or where PyYAML is missing (a bare GPU box) the subset reader in
    ``pipelines/mini_yaml.py``, which reads every packaged recipe the same (tested). ``document``
    False: one value, as ``--set`` gives."""
    try:
        import yaml
    except ImportError:
        from pipelines import mini_yaml

        return mini_yaml.loads(text) if document else mini_yaml.value(text)
    return yaml.safe_load(text)


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=0.1", "views.groups.global.size=32"]`` -> nested dict, values as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        value = safe_load(raw, document=False) if raw else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        data = safe_load(f.read()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    return data


def packaged_yaml(name: str) -> dict[str, Any]:
    """A YAML file shipped in ``pipelines/configs``."""
    text = resources.files("pipelines").joinpath("configs", name).read_text()
    return safe_load(text) or {}


def recipe(method: str) -> dict[str, Any]:
    """The method's recipe: the paper's defaults as plain data."""
    get_method(method)
    return packaged_yaml(f"{method}.yaml")


def embedded_profile(method: str, base: dict[str, Any]) -> dict[str, Any]:
    """The laptop profile: its generic part, then its ``methods.<method>`` part, restricted to
    the view groups the recipe has."""
    profile = packaged_yaml("embedded.yaml")
    profile = deep_merge(profile, profile.pop("methods", {}).get(method, {}))
    groups = profile.get("views", {}).get("groups")
    if groups:
        present = base.get("views", {}).get("groups", {"global": {}})
        profile["views"]["groups"] = {k: v for k, v in groups.items() if k in present}
    return profile


def dump_yaml(cfg: Any) -> str:
    """A typed config as YAML, in field order."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
