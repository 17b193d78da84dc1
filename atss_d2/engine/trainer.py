"""The training glue of train_net.py: detectron2's DefaultTrainer with robust data, crash-safe
checkpoints, config checks and a COCO evaluator that copes with zero detections."""

import logging
import os

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer

from ..data.mapper import ATSSDatasetMapper, SkippingMapDataset
from ..evaluation import ATSSCOCOEvaluator
from .checkpoint import SafeAtomicCheckpointer
from .config import check_num_classes, validate_config

__all__ = ["ATSSTrainer"]

logger = logging.getLogger(__name__)


def _check_loaded_classes(cfg, dataset_names) -> None:
    """NUM_CLASSES against the datasets' classes, now that loading them set the metadata."""
    unchecked = check_num_classes(cfg, dataset_names)
    if unchecked:
        logger.warning(
            f"Datasets {unchecked} declare no thing_classes; only the category ids of their "
            f"annotations are checked (against MODEL.ATSS.NUM_CLASSES)"
        )


class ATSSTrainer(DefaultTrainer):
    """
    ``DefaultTrainer`` with:

    - :func:`validate_config` before anything is built;
    - :class:`ATSSDatasetMapper` for training and testing; unreadable training images are
      skipped (counted in a warning) when ``DATALOADER.SKIP_UNREADABLE_IMAGES``;
    - :class:`SafeAtomicCheckpointer`: periodic checkpoints and ``last_checkpoint`` are written
      atomically and never with NaN weights, so ``--resume`` after a crash or ``kill -9``
      continues from the last complete checkpoint; files are loaded without unpickling code;
    - :class:`ATSSCOCOEvaluator` (0 AP, not NaN, for a model without detections).

    A non-finite loss stops training with ``FloatingPointError`` naming the iteration and the
    losses (detectron2's ``SimpleTrainer`` check, done before the optimizer step, so the weights
    and checkpoints stay finite).
    """

    def __init__(self, cfg):
        validate_config(cfg)
        super().__init__(cfg)

    @classmethod
    def build_checkpointer(cls, cfg, model, save_dir=None, **checkpointables):
        """The checkpointer for training and for ``--eval-only``: atomic saves, and
        ``MODEL.WEIGHTS`` / resumed files loaded without unpickling code."""
        return SafeAtomicCheckpointer(
            model, cfg.OUTPUT_DIR if save_dir is None else save_dir, **checkpointables
        )

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer right before calling this;
        # replace it so that the PeriodicCheckpointer hook and resume_or_load use ours.
        plain = self.checkpointer
        self.checkpointer = self.build_checkpointer(
            self.cfg, plain.model, plain.save_dir, **plain.checkpointables
        )
        self.checkpointer.save_to_disk = plain.save_to_disk
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = ATSSDatasetMapper(cfg, is_train=True)
        # detectron2's own loader arguments (datasets loaded and filtered, sampler), with our
        # map-style dataset in place of its MapDataset.
        kwargs = build_detection_train_loader.from_config(cfg, mapper=mapper)
        _check_loaded_classes(cfg, cfg.DATASETS.TRAIN)
        dataset = SkippingMapDataset(kwargs.pop("dataset"), kwargs.pop("mapper"))
        return build_detection_train_loader(dataset, mapper=None, **kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(
            cfg, dataset_name, mapper=ATSSDatasetMapper(cfg, is_train=False)
        )
        _check_loaded_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return ATSSCOCOEvaluator(dataset_name, output_dir=output_folder)
