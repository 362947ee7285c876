"""Search spaces: a YAML file of config keys and distributions, checked before any trial starts.

A space maps dotted config keys (``optim.base_lr``, ``method_args.temperature``) — or the same
keys nested — to one distribution::

    optim.base_lr: {loguniform: [0.01, 1.0]}
    method_args.temperature: {choice: [0.1, 0.2, 0.5]}
    optim.weight_decay: {uniform: [0.0, 1.0e-4]}
    train.seed: {grid: [0, 1]}

``grid`` values are each run (times ``--num-samples``); the others are sampled. Every key must
name a setting of the method's config, and every value it can take must pass that setting's
checks, so a typo or a bad bound fails here, naming the key, not minutes later inside a trial.
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config.layers import deep_merge, load_config, read_yaml
from pipelines.config.typed import ConfigError, flatten, to_dict

FAMILIES = ("choice", "uniform", "loguniform", "grid")


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key
    family: str  # one of FAMILIES
    values: tuple  # choice/grid: the values; uniform/loguniform: (low, high)

    def candidates(self) -> tuple:
        """Values that must each make a valid config (the bounds stand for a range)."""
        return self.values

    def to_tune(self) -> Any:
        from ray import tune

        if self.family == "choice":
            return tune.choice(list(self.values))
        if self.family == "grid":
            return tune.grid_search(list(self.values))
        if self.family == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)

    def mutation(self) -> Any:
        """What PBT's explore step may resample from (grids become choices: PBT has no grid)."""
        from ray import tune

        if self.family in ("choice", "grid"):
            return list(self.values)
        return tune.uniform(*self.values) if self.family == "uniform" else self.to_tune()


def unflatten(values: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> its distribution mapping; nested mappings without a family key descend."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(value, dict):
            out[dotted] = value
            continue
        # a one-entry mapping onto a list is a distribution (maybe a misspelt one): a leaf
        is_leaf = len(value) == 1 and isinstance(next(iter(value.values())), list)
        if isinstance(value, dict) and not (set(value) & set(FAMILIES)) and not is_leaf:
            if not value:
                raise ConfigError(f"space key '{dotted}': empty mapping, expected a distribution")
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"space key '{key}'"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one of {{choice|grid: [values], uniform|loguniform: [low, high]}}, "
            f"got {spec!r}"
        )
    ((family, values),) = spec.items()
    if family not in FAMILIES:
        raise ConfigError(f"{where}: unknown distribution '{family}'; use one of {list(FAMILIES)}")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {family} takes a non-empty list, got {values!r}")
    if family in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"{where}: {family} takes [low, high] numbers, got {values!r}")
        low, high = float(values[0]), float(values[1])
        if not low < high:
            raise ConfigError(f"{where}: {family} needs low < high, got {values!r}")
        if family == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {values!r}")
        values = [low, high]
    return Dimension(key, family, tuple(values))


def parse_space(data: Any, source: str = "space") -> list[Dimension]:
    """The dimensions of a space given as plain data; malformed entries name their key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: a search space is a non-empty mapping of config keys")
    return [_dimension(k, v) for k, v in _leaves(data).items()]


def space_path(name: str) -> str:
    """``--space``: a YAML file, or the name of a space shipped in ``tuning/spaces`` (e.g.
    ``contrastive``), so the command works from any directory."""
    if Path(name).is_file():
        return name
    from importlib import resources

    shipped = resources.files("tuning").joinpath("spaces", f"{Path(name).stem}.yaml")
    if shipped.is_file():
        return str(shipped)
    names = sorted(
        f.name.removesuffix(".yaml") for f in resources.files("tuning").joinpath("spaces").iterdir()
    )
    raise ConfigError(f"--space {name}: no such file, nor a shipped space (one of {names})")


def load_space(path: str | Path) -> list[Dimension]:
    path = space_path(str(path))
    return parse_space(read_yaml(path), str(path))


def validate(dims: list[Dimension], method: str | None, overrides: dict[str, Any]) -> None:
    """Every key a setting of the config ``method`` + ``overrides`` builds, every candidate
    value accepted by it; raise ConfigError naming the first key that is not."""
    base = load_config(method, None, overrides)
    known = flatten(to_dict(base))
    for dim in dims:
        if dim.key == "method":
            raise ConfigError("space key 'method': sweep methods with `sslpipe survey`")
        if dim.key not in known:
            near = difflib.get_close_matches(dim.key, list(known), n=3)
            hint = f"; did you mean {near}?" if near else ""
            raise ConfigError(
                f"space key '{dim.key}': not a setting of the {base.method} config{hint}"
            )
        for value in dim.candidates():
            try:
                load_config(method, None, deep_merge(overrides, unflatten({dim.key: value})))
            except ConfigError as e:
                raise ConfigError(f"space key '{dim.key}': value {value!r} rejected: {e}") from None


def param_space(dims: list[Dimension]) -> dict[str, Any]:
    return {d.key: d.to_tune() for d in dims}
