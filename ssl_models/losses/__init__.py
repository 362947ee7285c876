"""Pure loss functions: tensors in, scalar tensor out; one file per family.

The names, signatures and conventions here are a public API that other tools call.
"""

from ssl_models.losses.contrastive import info_nce_loss, moco_v3_loss, nt_xent_loss
from ssl_models.losses.dino import (
    DINOCenter,
    dino_center_update,
    dino_loss,
    teacher_temperature,
)
from ssl_models.losses.distillation import byol_loss, simsiam_loss

__all__ = [
    "DINOCenter",
    "byol_loss",
    "dino_center_update",
    "dino_loss",
    "info_nce_loss",
    "moco_v3_loss",
    "nt_xent_loss",
    "simsiam_loss",
    "teacher_temperature",
]
