"""
COCO evaluation that gives numbers for a model without detections.

detectron2 0.6's ``COCOEvaluator`` skips the COCO API when the model returns no detection at all
("cocoapi does not handle empty results very well") and reports every metric as NaN. A model
that detects nothing has AP 0, not an undefined AP: :class:`ATSSCOCOEvaluator` runs the COCO API
on an empty result set instead, which gives 0 for every metric the ground truth defines (and
NaN, as usual, only where it defines none, e.g. AP-small without small objects, or a class
without any ground-truth box). Images without annotations are ordinary COCO images: they only
add false positives.
"""

import contextlib
import io
from typing import Optional, Sequence

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .utils import has_compiled_ops

__all__ = ["ATSSCOCOEvaluator", "empty_coco_results"]


def empty_coco_results(coco_gt: COCO) -> COCO:
    """A COCO result set over ``coco_gt``'s images and categories with no detection (what
    ``coco_gt.loadRes([])`` would return if pycocotools accepted an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


class ATSSCOCOEvaluator(COCOEvaluator):
    """
    ``COCOEvaluator`` for box detection that reports 0 AP (not NaN) when the model returns no
    detection on the whole dataset. Keyword arguments as ``COCOEvaluator``; ``tasks`` defaults to
    ``("bbox",)`` and ``use_fast_impl`` to whether detectron2's compiled ops are available.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        use_fast_impl: Optional[bool] = None,
        **kwargs,
    ):
        if use_fast_impl is None:
            use_fast_impl = has_compiled_ops()
        super().__init__(
            dataset_name,
            tasks=tuple(tasks),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=use_fast_impl,
            **kwargs,
        )
        self._img_ids = None

    def evaluate(self, img_ids=None):
        self._img_ids = img_ids
        return super().evaluate(img_ids=img_ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and iou_type == "bbox":
            # The base class calls this with None when there is no detection at all.
            self._logger.info("No detections from the model: evaluating an empty result set")
            coco_eval = self._evaluate_empty(iou_type)
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)

    def _evaluate_empty(self, iou_type: str) -> COCOeval:
        max_dets = list(getattr(self, "_max_dets_per_image", None) or [1, 10, 100])
        # pycocotools' summary assumes 100 detections per image; detectron2's subclass does not.
        evaluator_class = COCOeval if max_dets[2] == 100 else COCOevalMaxDets
        coco_eval = evaluator_class(self._coco_api, empty_coco_results(self._coco_api), iou_type)
        coco_eval.params.maxDets = max_dets
        if self._img_ids is not None:
            coco_eval.params.imgIds = list(self._img_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval.evaluate()
            coco_eval.accumulate()
        coco_eval.summarize()  # prints the usual table, like the base class
        return coco_eval
