"""Pure loss functions: tensors in, scalar tensor out; one file per family.

The names, signatures and conventions here are a public API that other tools call.
"""

from ssl_models.losses.clustering import sinkhorn, swav_loss
from ssl_models.losses.contrastive import info_nce_loss, moco_v3_loss, nt_xent_loss
from ssl_models.losses.decorrelation import barlow_twins_loss, vicreg_loss, vicreg_terms
from ssl_models.losses.dino import (
    DINOCenter,
    dino_center_update,
    dino_loss,
    dino_loss_from_targets,
    teacher_temperature,
    teacher_temperature_per_epoch,
)
from ssl_models.losses.distillation import byol_loss, simsiam_loss
from ssl_models.losses.ibot import ibot_loss, masked_patch_loss
from ssl_models.losses.koleo import koleo_loss, koleo_loss_per_crop
from ssl_models.losses.mim import (
    beit_loss,
    cae_alignment_loss,
    cae_loss,
    mae_loss,
    simmim_loss,
)
from ssl_models.losses.pretext import jigsaw_loss, relative_loc_loss, rotation_loss

__all__ = [
    "DINOCenter",
    "barlow_twins_loss",
    "beit_loss",
    "byol_loss",
    "cae_alignment_loss",
    "cae_loss",
    "dino_center_update",
    "dino_loss",
    "dino_loss_from_targets",
    "ibot_loss",
    "info_nce_loss",
    "jigsaw_loss",
    "koleo_loss",
    "koleo_loss_per_crop",
    "mae_loss",
    "masked_patch_loss",
    "moco_v3_loss",
    "nt_xent_loss",
    "relative_loc_loss",
    "rotation_loss",
    "simmim_loss",
    "simsiam_loss",
    "sinkhorn",
    "swav_loss",
    "teacher_temperature",
    "teacher_temperature_per_epoch",
    "vicreg_loss",
    "vicreg_terms",
]
