"""The one registry of methods: key -> (method class, its config dataclass, family).

Adding a method means a method file, its view recipe, any new loss or head, one entry here and
its tests.
"""

from dataclasses import dataclass

from ssl_models.methods.beit import BEiT, BEiTConfig
from ssl_models.methods.cae import CAE, CAEConfig
from ssl_models.methods.mae import MAE, MAEConfig
from ssl_models.methods.simclr import SimCLR, SimCLRConfig
from ssl_models.methods.simmim import SimMIM, SimMIMConfig


@dataclass(frozen=True)
class MethodEntry:
    cls: type
    config: type
    family: str
    paper: str


METHODS: dict[str, MethodEntry] = {
    "simclr": MethodEntry(SimCLR, SimCLRConfig, "contrastive", "Chen et al., ICML 2020"),
    "mae": MethodEntry(MAE, MAEConfig, "masked image modeling", "He et al., CVPR 2022"),
    "simmim": MethodEntry(SimMIM, SimMIMConfig, "masked image modeling", "Xie et al., CVPR 2022"),
    "beit": MethodEntry(BEiT, BEiTConfig, "masked image modeling", "Bao et al., ICLR 2022"),
    "cae": MethodEntry(CAE, CAEConfig, "masked image modeling", "Chen et al., IJCV 2023"),
}


def get_method(key: str) -> MethodEntry:
    if key not in METHODS:
        raise KeyError(f"unknown method {key!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]
