"""The YAML layers a run's config is resolved from, in order, each overriding the one before:

1. the method's recipe (``recipes/<method>.yaml``, the paper's settings);
2. the laptop profile (``recipes/embedded.yaml``): ``profile: laptop``, the default when no data
   path is given (``paper``, the recipe alone, is the default with one);
3. the user's ``--config`` file;
4. ``--set key=value`` pairs and flags.

``load_config`` resolves them into a typed ``Config``.
"""

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipelines.config.checks import check_decode_device, check_recipe, check_training
from pipelines.config.schema import Config
from pipelines.config.typed import ConfigError, coerce, from_dict, to_dict


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=0.1", "views.groups.global.size=32"]`` -> nested dict, values as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        value = yaml.safe_load(raw) if raw else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    return data


def packaged_yaml(name: str) -> dict[str, Any]:
    """A YAML file shipped in ``pipelines/config/recipes``."""
    text = resources.files("pipelines.config").joinpath("recipes", name).read_text()
    return yaml.safe_load(text) or {}


def recipe_names() -> list[str]:
    """The methods with a packaged recipe (one per registry key; tested), read without importing
    the model code, so command-line help stays light."""
    files = resources.files("pipelines.config").joinpath("recipes").iterdir()
    return sorted(
        f.name[: -len(".yaml")]
        for f in files
        if f.name.endswith(".yaml") and f.name != "embedded.yaml"
    )


def recipe(method: str) -> dict[str, Any]:
    """The method's recipe: the paper's defaults as plain data."""
    check_method(method)
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
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def check_method(method: Any) -> None:
    from ssl_models.registry import METHODS  # the model zoo, loaded only to build a config

    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"config key 'method': {method!r} is not one of {sorted(METHODS)}")


def method_config(method: str) -> type:
    from ssl_models.registry import get_method

    return get_method(method).config


def build_config(data: dict[str, Any]) -> Config:
    """Typed config from merged plain data; ``method_args`` is typed by the chosen method."""
    data = dict(data)
    method = data.get("method", Config.method)
    check_method(method)
    method_args = data.pop("method_args", None) or {}
    cfg = from_dict(Config, data)
    args = coerce(method_args, method_config(method), "method_args")
    cfg = replace(cfg, method_args=args)
    check_training(cfg)
    check_recipe(cfg)
    check_decode_device(cfg)
    return cfg


PROFILES = ("laptop", "paper")


def load_config(
    method: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Resolve the layers into a typed config (see the module docstring for the order)."""
    user = read_yaml(config_file) if config_file else {}
    user = deep_merge(user, overrides or {})
    chosen = method or user.get("method") or Config.method
    check_method(chosen)
    user["method"] = chosen
    data = recipe(chosen)
    has_data = user.get("data", {}).get("path") or data.get("data", {}).get("path")
    profile = user.get("profile") or ("paper" if has_data else "laptop")
    if profile not in PROFILES:
        raise ConfigError(f"config key 'profile': {profile!r} is not one of {sorted(PROFILES)}")
    if profile == "laptop":
        data = deep_merge(data, embedded_profile(chosen, data))
    user["profile"] = profile
    return build_config(deep_merge(data, user))
