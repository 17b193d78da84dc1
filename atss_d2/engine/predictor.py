"""A DefaultPredictor that loads MODEL.WEIGHTS without unpickling code, and says when the model it
runs is untrained."""

import logging
from typing import Optional

from detectron2.engine import DefaultPredictor

from ..checkpoint import LoadReport, SafeDetectionCheckpointer

__all__ = ["SafePredictor", "UNTRAINED_HEAD", "warn_if_head_untrained"]

logger = logging.getLogger(__name__)

UNTRAINED_HEAD = "the head is randomly initialised: detections are meaningless"


def warn_if_head_untrained(weights: str, report: Optional[LoadReport]) -> bool:
    """
    Log a warning when a model about to run inference has a detection head that did not come
    from ``weights`` (``MODEL.WEIGHTS`` empty, or a file without the head, such as an ImageNet
    backbone). ``report`` is the checkpointer's :attr:`~SafeDetectionCheckpointer.last_load_report`.

    Returns:
        whether it warned.
    """
    if not weights:
        reason = "MODEL.WEIGHTS is empty"
    elif report is not None and not report.head_loaded:
        reason = f"{weights} holds no detection head (a backbone-only file?)"
    else:
        return False
    logger.warning(
        f"{reason}: {UNTRAINED_HEAD}. Set MODEL.WEIGHTS to a trained checkpoint, e.g. the "
        "model_final.pth that train_net.py writes in OUTPUT_DIR."
    )
    return True


class SafePredictor(DefaultPredictor):
    """
    detectron2's :class:`DefaultPredictor` (same ``__call__``: one BGR/RGB HWC uint8 image in,
    ``{"instances": ...}`` out), but ``MODEL.WEIGHTS`` is read by
    :class:`SafeDetectionCheckpointer`, which refuses pickles that would run code, and a model
    whose head is not from the weights file is reported (:func:`warn_if_head_untrained`).
    """

    def __init__(self, cfg):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing from an empty path
        super().__init__(cfg)
        self.cfg.MODEL.WEIGHTS = weights
        report = None
        if weights:
            checkpointer = SafeDetectionCheckpointer(self.model)
            checkpointer.load(weights)
            report = checkpointer.last_load_report
        self.head_untrained = warn_if_head_untrained(weights, report)
