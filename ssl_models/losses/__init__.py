"""Pure loss functions: tensors in, scalar tensor out; one file per family.

The names, signatures and conventions here are a public API that other tools call.
"""

from ssl_models.losses.contrastive import nt_xent_loss
from ssl_models.losses.mim import (
    beit_loss,
    cae_alignment_loss,
    cae_loss,
    mae_loss,
    simmim_loss,
)

__all__ = [
    "beit_loss",
    "cae_alignment_loss",
    "cae_loss",
    "mae_loss",
    "nt_xent_loss",
    "simmim_loss",
]
