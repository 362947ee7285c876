"""Pure loss functions: tensors in, scalar tensor out; one file per family.

The names, signatures and conventions here are a public API that other tools call.
"""

from ssl_models.losses.contrastive import nt_xent_loss

__all__ = ["nt_xent_loss"]
