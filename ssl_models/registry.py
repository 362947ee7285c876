"""The one registry of methods: key -> (method class, its config dataclass, family).

Adding a method means a method file, its view recipe, any new loss or head, one entry here and
its tests.
"""

from dataclasses import dataclass

from ssl_models.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from ssl_models.methods.beit import BEiT, BEiTConfig
from ssl_models.methods.byol import BYOL, BYOLConfig
from ssl_models.methods.cae import CAE, CAEConfig
from ssl_models.methods.dino import DINO, DINOConfig
from ssl_models.methods.dino_v2 import DINOv2, DINOv2Config
from ssl_models.methods.ibot import IBOT, IBOTConfig
from ssl_models.methods.jigsaw import Jigsaw, JigsawConfig
from ssl_models.methods.mae import MAE, MAEConfig
from ssl_models.methods.moco import MoCo, MoCoConfig
from ssl_models.methods.moco_v3 import MoCoV3, MoCoV3Config
from ssl_models.methods.relative_loc import RelativeLoc, RelativeLocConfig
from ssl_models.methods.rotnet import RotNet, RotNetConfig
from ssl_models.methods.simclr import SimCLR, SimCLRConfig
from ssl_models.methods.simmim import SimMIM, SimMIMConfig
from ssl_models.methods.simsiam import SimSiam, SimSiamConfig
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
    "simclr_v2": MethodEntry(SimCLR, SimCLRConfig, "contrastive", "Chen et al., NeurIPS 2020"),
    "moco_v1": MethodEntry(MoCo, MoCoConfig, "contrastive", "He et al., CVPR 2020"),
    "moco_v2": MethodEntry(MoCo, MoCoConfig, "contrastive", "Chen et al., arXiv:2003.04297"),
    "moco_v3": MethodEntry(MoCoV3, MoCoV3Config, "contrastive", "Chen, Xie & He, ICCV 2021"),
    "byol": MethodEntry(BYOL, BYOLConfig, "self-distillation", "Grill et al., NeurIPS 2020"),
    "simsiam": MethodEntry(SimSiam, SimSiamConfig, "self-distillation", "Chen & He, CVPR 2021"),
    "dino": MethodEntry(DINO, DINOConfig, "self-distillation", "Caron et al., ICCV 2021"),
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
    "mae": MethodEntry(MAE, MAEConfig, "masked image modeling", "He et al., CVPR 2022"),
    "simmim": MethodEntry(SimMIM, SimMIMConfig, "masked image modeling", "Xie et al., CVPR 2022"),
    "beit": MethodEntry(BEiT, BEiTConfig, "masked image modeling", "Bao et al., ICLR 2022"),
    "cae": MethodEntry(CAE, CAEConfig, "masked image modeling", "Chen et al., IJCV 2023"),
    "ibot": MethodEntry(IBOT, IBOTConfig, "contrastive-generative", "Zhou et al., ICLR 2022"),
    "dino_v2": MethodEntry(
        DINOv2, DINOv2Config, "self-distillation + MIM", "Oquab et al., TMLR 2024"
    ),
}


def get_method(key: str) -> MethodEntry:
    if key not in METHODS:
        raise KeyError(f"unknown method {key!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]
