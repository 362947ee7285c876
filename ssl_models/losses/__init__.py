"""Pure loss functions: tensors in, scalar tensor out; one file per family.

The names, signatures and conventions here are a public API that other tools call.
"""

from ssl_models.losses.clustering import sinkhorn, swav_loss
from ssl_models.losses.contrastive import nt_xent_loss
from ssl_models.losses.decorrelation import barlow_twins_loss, vicreg_loss, vicreg_terms
from ssl_models.losses.pretext import jigsaw_loss, relative_loc_loss, rotation_loss

__all__ = [
    "barlow_twins_loss",
    "jigsaw_loss",
    "nt_xent_loss",
    "relative_loc_loss",
    "rotation_loss",
    "sinkhorn",
    "swav_loss",
    "vicreg_loss",
    "vicreg_terms",
]
