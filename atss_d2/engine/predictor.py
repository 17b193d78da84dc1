"""A DefaultPredictor that loads MODEL.WEIGHTS without unpickling code, and says when the model it
runs is untrained."""

import contextlib
import logging
from typing import Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor

from ..checkpoint import LoadReport, SafeDetectionCheckpointer
from ..checkpoint.detection_checkpoint import IncompatibleWeightsError
from .config import _shown, check_device

__all__ = [
    "SafePredictor",
    "UNTRAINED_HEAD",
    "check_class_names",
    "check_head_for_inference",
    "check_weights_for_inference",
    "warn_if_head_untrained",
]

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


def check_head_for_inference(
    weights: str, report: Optional[LoadReport], key: str = "MODEL.ATSS.NUM_CLASSES"
) -> bool:
    """
    Refuse to run inference with a head that ``weights`` provided only in part: a head tensor
    whose shape differs from the model's (e.g. the classification layer of a checkpoint with
    another number of classes) is left at its random initialisation, which makes the
    detections meaningless. Training from such weights is fine (fine-tuning on new classes).
    A head that did not come from ``weights`` at all is a warning
    (:func:`warn_if_head_untrained`). ``report`` is the checkpointer's
    :attr:`~SafeDetectionCheckpointer.last_load_report`; ``key`` is the config key of the
    number of classes, named in the error.

    Returns:
        whether it warned of an untrained head.

    Raises:
        IncompatibleWeightsError: naming the file, the tensors and what to set.
    """
    head = [e for e in report.reinitialised if e[0].startswith("head.")] if report else []
    if not head:
        return warn_if_head_untrained(weights, report)
    layout = report.checkpoint_head_layout()
    if layout is not None:  # another anchors-per-location: no class count to set
        raise IncompatibleWeightsError(
            f"{weights}: the checkpoint's detection head has another layout ({layout}); this "
            f"model predicts {report.num_anchors or 1} anchor(s) x {report.num_classes} classes "
            "per location: it is the checkpoint of another detector; run it with the config it "
            "was trained with"
        )
    file_classes = report.checkpoint_num_classes()
    if file_classes is not None:
        raise IncompatibleWeightsError(
            f"{weights}: head.cls_score has {file_classes} classes in the checkpoint, the config "
            f"says {key} {report.num_classes}: set {key} {file_classes} (and register the "
            "dataset with the classes it was trained on, e.g. --classes or the same "
            "--voc-dataset folders as for training)"
        )
    shapes = "; ".join(
        f"{name} {tuple(in_file)} in the checkpoint, {tuple(in_model)} in the model"
        for name, in_file, in_model in head
    )
    raise IncompatibleWeightsError(
        f"{weights}: the detection head does not fit the model of the config ({shapes}); "
        "run it with the config it was trained with"
    )


def check_class_names(weights: str, saved, names, source: str) -> None:
    """
    Compare the class names ``saved`` with the checkpoint ``weights`` (by atss_d2's trainer:
    :attr:`LoadReport.thing_classes`) with ``names``, those of ``source`` (a dataset,
    ``--classes``) for inference. Nothing to compare (no saved names, other counts, which the
    head check reports) or the same list: nothing happens. The same names in another order
    would give each class id another class: :class:`IncompatibleWeightsError`. Other names
    (renamed classes?) are a warning: detections of class ``i`` get the ``i``-th of ``names``.
    """
    saved, names = list(saved or []), list(names or [])
    if not saved or len(saved) != len(names) or saved == names:
        return
    if sorted(saved) == sorted(names):
        raise IncompatibleWeightsError(
            f"{weights} was trained on the classes ({_shown(saved)}) in this order, but "
            f"{source} lists them in another ({_shown(names)}): each class id would be another "
            "class. Give the classes in the training order (the same --voc-dataset folders or "
            "--classes as for training; the same 'categories' in a COCO json)"
        )
    logger.warning(
        f"{weights} was trained on the classes ({_shown(saved)}); {source} names them "
        f"({_shown(names)}): class i is labelled with the i-th of these"
    )


def check_weights_for_inference(
    weights: str,
    report: Optional[LoadReport],
    dataset_names: Sequence[str],
    key: str = "MODEL.ATSS.NUM_CLASSES",
) -> bool:
    """
    What ``--eval-only`` checks of loaded weights before evaluating on ``dataset_names``:
    :func:`check_head_for_inference`, then :func:`check_class_names` against each dataset's
    class names. Returns whether it warned of an untrained head.
    """
    untrained = check_head_for_inference(weights, report, key=key)
    saved = report.thing_classes if report is not None else None
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        check_class_names(weights, saved, classes, f"dataset {name!r}")
    return untrained


@contextlib.contextmanager
def _quiet_empty_load():
    """Without fvcore's "No checkpoint found. Initializing model from scratch" for the empty
    path DefaultPredictor is given: the weights are loaded next, and reported then."""
    checkpoint_logger = logging.getLogger("fvcore.common.checkpoint")
    level = checkpoint_logger.level
    checkpoint_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        checkpoint_logger.setLevel(level)


class SafePredictor(DefaultPredictor):
    """
    detectron2's :class:`DefaultPredictor` (same ``__call__``: one BGR/RGB HWC uint8 image in,
    ``{"instances": ...}`` out), but ``MODEL.WEIGHTS`` is read by
    :class:`SafeDetectionCheckpointer`, which refuses pickles that would run code, and a model
    whose head is not from the weights file is reported, and a head that only partly fits the
    config (another number of classes) raises
    :class:`~atss_d2.checkpoint.detection_checkpoint.IncompatibleWeightsError`
    (:func:`check_head_for_inference`). A CUDA ``MODEL.DEVICE`` on a machine without CUDA
    raises :class:`~atss_d2.engine.ConfigError` before the model is built.
    """

    def __init__(self, cfg):
        check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE", "set MODEL.DEVICE cpu")
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing from an empty path
        with _quiet_empty_load():
            super().__init__(cfg)
        self.cfg.MODEL.WEIGHTS = weights
        report = None
        if weights:
            checkpointer = SafeDetectionCheckpointer(self.model)
            checkpointer.load(weights)
            report = checkpointer.last_load_report
        self.head_untrained = check_head_for_inference(weights, report)
        # The class names saved with the weights (None if it has none): see check_class_names.
        self.checkpoint_classes = report.thing_classes if report is not None else None
