"""A DefaultPredictor that loads MODEL.WEIGHTS without unpickling code."""

from detectron2.engine import DefaultPredictor

from ..checkpoint import SafeDetectionCheckpointer

__all__ = ["SafePredictor"]


class SafePredictor(DefaultPredictor):
    """
    detectron2's :class:`DefaultPredictor` (same ``__call__``: one BGR/RGB HWC uint8 image in,
    ``{"instances": ...}`` out), but ``MODEL.WEIGHTS`` is read by
    :class:`SafeDetectionCheckpointer`, which refuses pickles that would run code.
    """

    def __init__(self, cfg):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing from an empty path
        super().__init__(cfg)
        self.cfg.MODEL.WEIGHTS = weights
        if weights:
            SafeDetectionCheckpointer(self.model).load(weights)
