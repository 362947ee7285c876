"""The one registry of methods: key -> (method class, its config dataclass, family).

Adding a method means a method file, its view recipe, any new loss or head, one entry here and
its tests.
"""

from dataclasses import dataclass

from ssl_models.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from ssl_models.methods.jigsaw import Jigsaw, JigsawConfig
from ssl_models.methods.relative_loc import RelativeLoc, RelativeLocConfig
from ssl_models.methods.rotnet import RotNet, RotNetConfig
from ssl_models.methods.simclr import SimCLR, SimCLRConfig
from ssl_models.methods.swav import SwAV, SwAVConfig
from ssl_models.methods.vicreg import VICReg, VICRegConfig


@dataclass(frozen=True)
class MethodEntry:
    cls: type
    config: type
    family: str
    paper: str


METHODS: dict[str, MethodEntry] = {
    "simclr": MethodEntry(SimCLR, SimCLRConfig, "contrastive", "Chen et al., ICML 2020"),
    "rotnet": MethodEntry(RotNet, RotNetConfig, "context-based", "Gidaris et al., ICLR 2018"),
    "relative_loc": MethodEntry(
        RelativeLoc, RelativeLocConfig, "context-based", "Doersch et al., ICCV 2015"
    ),
    "jigsaw": MethodEntry(Jigsaw, JigsawConfig, "context-based", "Noroozi & Favaro, ECCV 2016"),
    "swav": MethodEntry(SwAV, SwAVConfig, "clustering", "Caron et al., NeurIPS 2020"),
    "barlow_twins": MethodEntry(
        BarlowTwins, BarlowTwinsConfig, "feature decorrelation", "Zbontar et al., ICML 2021"
    ),
    "vicreg": MethodEntry(
        VICReg, VICRegConfig, "feature decorrelation", "Bardes et al., ICLR 2022"
    ),
}


def get_method(key: str) -> MethodEntry:
    if key not in METHODS:
        raise KeyError(f"unknown method {key!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]
