"""The one registry of methods: key -> (method class, its config dataclass, family).

Adding a method means a method file, its view recipe, any new loss or head, one entry here and
its tests.
"""

from dataclasses import dataclass

from ssl_models.methods.simclr import SimCLR, SimCLRConfig


@dataclass(frozen=True)
class MethodEntry:
    cls: type
    config: type
    family: str
    paper: str


METHODS: dict[str, MethodEntry] = {
    "simclr": MethodEntry(SimCLR, SimCLRConfig, "contrastive", "Chen et al., ICML 2020"),
}


def get_method(key: str) -> MethodEntry:
    if key not in METHODS:
        raise KeyError(f"unknown method {key!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]
