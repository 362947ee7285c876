"""The part of a run's wrap-up that training does not change, done while Ray starts the workers.

Between ``ray.init`` and the first step the driver only waits and the machine has a core to
spare (Ray's controller, worker group and data coordinator start one after another); after the
last step everything the driver does is on the critical path. So a thread started before
``fit`` does what the end would otherwise do first:

- decodes the final evaluation's views of a small set (``eval.in_process_rows``) and keeps them
  (``sets.held_views``; at most ``VIEW_BYTES``), so the end only embeds them;
- imports what the end imports: torchvision (for a ResNet's blocks), MLflow's model logging and
  the curves' plotting;
- builds MLflow's index of installed distributions: logging the encoder checks its pinned
  requirements against every installed package once per process (about 1-2 s).

Anything that fails here is left to the end, which then does it itself.
"""

import logging
import threading

from pipelines.config.schema import Config
from pipelines.eval.encoders import eval_image_size
from pipelines.eval.sets import EvalSplit, HeldViews, held_views

log = logging.getLogger(__name__)

VIEW_BYTES = 256 * 2**20  # evaluation views kept from start-up to the end, at most


class WrapUp:
    """Starts the preparation on creation; :meth:`views` waits for it."""

    def __init__(self, cfg: Config, split: EvalSplit, evaluate: bool = True):
        self._views: tuple[HeldViews, HeldViews] | None = None
        self._thread = threading.Thread(
            target=self._prepare, args=(cfg, split, evaluate), name="sslpipe-wrapup", daemon=True
        )
        self._thread.start()

    def _prepare(self, cfg: Config, split: EvalSplit, evaluate: bool) -> None:
        try:
            warm_model_logging()
            if evaluate:
                size, rows = eval_image_size(cfg), cfg.eval.in_process_rows
                crop = cfg.eval.crop_fraction
                self._views = held_views(split, size, crop, rows, VIEW_BYTES)
        except Exception:  # the end makes them itself
            log.debug("preparing the wrap-up failed; the end does it", exc_info=True)

    def views(self) -> tuple[HeldViews, HeldViews] | None:
        """(bank, queries) of the final evaluation, or None where the end makes its own."""
        self._thread.join()
        return self._views


def warm_model_logging() -> None:
    """Import what building the encoder, logging it and drawing the curves import, and build
    MLflow's map of installed distributions (a private cache of
    ``mlflow.utils.requirements_utils``: where it is gone, logging builds it as before)."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.models import infer_signature  # noqa: F401
    from mlflow.utils import requirements_utils

    from pipelines.tracking import curves, encoder_model  # noqa: F401
    from ssl_models.backbones.resnet import residual_blocks

    residual_blocks()
    curves._pyplot()
    build = getattr(requirements_utils, "_init_packages_to_modules_map", None)
    if build is not None:
        build()
