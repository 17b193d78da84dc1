"""
COCO evaluation that gives numbers for a model without detections, and Pascal VOC evaluation
that runs with current numpy.

detectron2 0.6's ``COCOEvaluator`` skips the COCO API when the model returns no detection at all
("cocoapi does not handle empty results very well") and reports every metric as NaN. A model
that detects nothing has AP 0, not an undefined AP: :class:`ATSSCOCOEvaluator` runs the COCO API
on an empty result set instead, which gives 0 for every metric the ground truth defines (and
NaN, as usual, only where it defines none, e.g. AP-small without small objects, or a class
without any ground-truth box). Images without annotations are ordinary COCO images: they only
add false positives.
"""

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import pickle
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple
from xml.etree import ElementTree

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .utils import has_compiled_ops

logger = logging.getLogger(__name__)

__all__ = [
    "ATSSCOCOEvaluator",
    "ATSSPascalVOCEvaluator",
    "empty_coco_results",
    "repair_coco_ground_truth",
    "voc_average_precision",
    "voc_class_ap",
]


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


def repair_coco_ground_truth(coco_gt: COCO, source: str = "the ground truth") -> List[str]:
    """
    Make a COCO instances ground truth evaluable by pycocotools, in place, and say what was
    changed (nothing for a json as the COCO format defines it):

    - annotation ids that are not whole numbers >= 1 are renumbered 1, 2, ...: pycocotools'
      ``COCOeval.evaluateImg`` records a matched detection by its ground truth's id, 0 meaning
      "unmatched", so a ground truth of id 0 cannot be matched (Label Studio's COCO export
      numbers annotations from 0);
    - a missing ``iscrowd`` is 0 and a missing ``area`` the box's width x height (COCOeval reads
      both for every annotation).
    """
    anns = coco_gt.dataset.get("annotations", [])
    changes = []
    ids = [a.get("id") for a in anns]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in ids):
        for new_id, ann in enumerate(anns, start=1):
            ann["id"] = new_id
        changes.append("annotation ids renumbered from 1 (pycocotools cannot match an id 0)")
    no_crowd = [a for a in anns if "iscrowd" not in a]
    for ann in no_crowd:
        ann["iscrowd"] = 0
    if no_crowd:
        changes.append(f"'iscrowd' 0 given to {len(no_crowd)} annotations without it")
    no_area = [a for a in anns if "area" not in a]
    for ann in no_area:
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    if no_area:
        changes.append(f"'area' (box width x height) given to {len(no_area)} annotations")
    if changes:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
        logger.info(f"COCO evaluation of {source}: " + "; ".join(changes))
    return changes


def _dataset_digest(dataset_name: str) -> str:
    """A digest of a registered dataset's dicts: changes when its annotations change."""
    dicts = DatasetCatalog.get(dataset_name)
    try:  # the dicts as loaded (same content, same order: same bytes); a few times json's speed
        data = pickle.dumps(dicts, protocol=4)
    except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a lambda in a dict
        data = json.dumps(dicts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha1(data).hexdigest()[:12]


class ATSSCOCOEvaluator(COCOEvaluator):
    """
    ``COCOEvaluator`` for box detection that reports 0 AP (not NaN) when the model returns no
    detection on the whole dataset. Keyword arguments as ``COCOEvaluator``; ``tasks`` defaults to
    ``("bbox",)`` and ``use_fast_impl`` to whether detectron2's compiled ops are available;
    ``plus_one`` writes the authors' "+1" widths (see :meth:`process`).

    Also:

    - a dataset without a COCO json (VOC folders, datasets of dicts) is converted to
      ``<output_dir>/<name>_coco_format_<digest>.json``, the digest taken from its dicts:
      detectron2 caches ``<name>_coco_format.json`` and keeps evaluating against it after the
      annotations change;
    - the ground truth is repaired where pycocotools would misjudge it
      (:func:`repair_coco_ground_truth`);
    - a warning says when an image has more objects than ``max_dets_per_image`` (default
      100) detections are evaluated: its recall, and so AP, cannot reach 100; and when the
      dataset has no ground-truth box at all (every metric is then NaN).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        use_fast_impl: Optional[bool] = None,
        plus_one: bool = False,
        **kwargs,
    ):
        if use_fast_impl is None:
            use_fast_impl = has_compiled_ops()
        metadata = MetadataCatalog.get(dataset_name)
        if output_dir is not None and not hasattr(metadata, "json_file"):
            path = os.path.join(
                output_dir, f"{dataset_name}_coco_format_{_dataset_digest(dataset_name)}.json"
            )
            if not os.path.exists(path):
                convert_to_coco_json(dataset_name, path, allow_cached=False)
            metadata.json_file = path  # as COCOEvaluator sets its own conversion's path
        super().__init__(
            dataset_name,
            tasks=tuple(tasks),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=use_fast_impl,
            **kwargs,
        )
        self._img_ids = None
        self._plus_one = bool(plus_one)
        repair_coco_ground_truth(self._coco_api, self._metadata.json_file)
        self._warn_if_capped(dataset_name)
        self._warn_if_no_ground_truth(dataset_name)

    def _warn_if_no_ground_truth(self, dataset_name: str) -> None:
        annotations = self._coco_api.dataset.get("annotations")
        if any(not a.get("iscrowd", 0) for a in annotations or []):
            return
        if annotations is None:
            # COCOEvaluator then only writes the detections (a COCO test-dev style json).
            outcome = (
                "has no 'annotations' key: only the detections are written "
                "(coco_instances_results.json), without any AP"
            )
        else:
            outcome = (
                "has no annotations, or only crowd ones: its COCO AP and AR are undefined and "
                "print as NaN"
            )
        self._logger.warning(
            f"Dataset {dataset_name!r} has no ground-truth boxes: {self._metadata.json_file} "
            f"{outcome}. Evaluate on a split with annotations (a test split exported without "
            "labels can only be looked at, e.g. with demo/demo.py)"
        )

    def _warn_if_capped(self, dataset_name: str) -> None:
        per_image = defaultdict(int)
        for ann in self._coco_api.dataset.get("annotations", []):
            if not ann.get("iscrowd", 0):
                per_image[ann["image_id"]] += 1
        max_dets = self._max_dets_per_image[2]
        crowded = [i for i, n in per_image.items() if n > max_dets]
        if crowded:
            most = max(per_image.values())
            self._logger.warning(
                f"{len(crowded)} images of {dataset_name} have more objects than the "
                f"{max_dets} detections per image COCO evaluation counts (up to {most}, e.g. "
                f"image id {crowded[0]!r}): their recall, and AP, stay below 100. Raise "
                "TEST.DETECTIONS_PER_IMAGE (the evaluation then counts as many)."
            )

    def process(self, inputs, outputs):
        """detectron2's, and with ``plus_one`` (the authors' ``MODEL.ATSS.LEGACY_PLUS_ONE``)
        the boxes are written as ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``, as their COCO
        evaluation does, the inverse of loading ``x2 = x + w - 1``."""
        first = len(self._predictions)
        super().process(inputs, outputs)
        if self._plus_one:
            for prediction in self._predictions[first:]:
                for instance in prediction.get("instances", []):
                    instance["bbox"][2] += 1.0
                    instance["bbox"][3] += 1.0

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


def voc_average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """
    Pascal VOC's AP of a precision/recall curve (points in decreasing-score order): VOC2007's
    11-point interpolation (mean of the best precision at recall >= 0, 0.1, ..., 1), or, from
    VOC2010 on, the area under the curve made monotonically decreasing.
    """
    if use_07_metric:
        points = [
            precision[recall >= t].max() if (recall >= t).any() else 0.0
            for t in np.arange(0, 1.1, 0.1)
        ]
        return float(np.mean(points))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _read_voc_objects(xml_file: str) -> List[Tuple[str, List[float], bool]]:
    """(class name, [x1, y1, x2, y2] as in the file, difficult) of each object of a VOC XML."""
    root = ElementTree.parse(xml_file).getroot()
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        coords = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and int(float(difficult.text or 0)) == 1
        objects.append((obj.find("name").text.strip(), coords, is_difficult))
    return objects


def voc_class_ap(
    detections: List[Tuple[str, float, List[float]]],
    ground_truth: Dict[str, List[Tuple[List[float], bool]]],
    iou_threshold: float,
    use_07_metric: bool,
) -> float:
    """
    Pascal VOC AP of one class. ``detections``: (image id, score, [x1, y1, x2, y2]);
    ``ground_truth``: image id -> [(box, difficult)]. Boxes in VOC's inclusive pixel
    coordinates (width x2 - x1 + 1). A detection matches the unmatched ground-truth box it
    overlaps most if their IoU exceeds ``iou_threshold``; matching a difficult box counts as
    neither a true nor a false positive, and difficult boxes are not counted in the recall.
    """
    num_positives = sum(not d for boxes in ground_truth.values() for _, d in boxes)
    matched = {image: [False] * len(boxes) for image, boxes in ground_truth.items()}
    tp, fp = [], []
    for image, _, det in sorted(detections, key=lambda d: -d[1]):
        gts = ground_truth.get(image, [])
        best, best_iou = -1, -math.inf
        for j, (gt, _) in enumerate(gts):
            iw = min(det[2], gt[2]) - max(det[0], gt[0]) + 1.0
            ih = min(det[3], gt[3]) - max(det[1], gt[1]) + 1.0
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = (
                (det[2] - det[0] + 1.0) * (det[3] - det[1] + 1.0)
                + (gt[2] - gt[0] + 1.0) * (gt[3] - gt[1] + 1.0)
                - inter
            )
            iou = inter / union
            if iou > best_iou:
                best, best_iou = j, iou
        if best_iou > iou_threshold:
            if gts[best][1]:
                continue  # a difficult object: ignored
            if not matched[image][best]:
                matched[image][best] = True
                tp.append(1.0)
                fp.append(0.0)
                continue
        tp.append(0.0)
        fp.append(1.0)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_sum / max(num_positives, 1)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    return voc_average_precision(recall, precision, use_07_metric)


class ATSSPascalVOCEvaluator(PascalVOCDetectionEvaluator):
    """
    detectron2's :class:`PascalVOCDetectionEvaluator` (same inputs: metadata ``dirname``,
    ``split``, ``year`` and ``thing_classes``; same results: ``{"bbox": {"AP", "AP50",
    "AP75"}}``, AP averaged over IoU 0.50:0.95 and the classes) with the AP computed by
    :func:`voc_class_ap`, which runs with current numpy (detectron2 0.6's ``voc_eval`` uses
    ``np.bool``, removed in numpy 1.24).
    """

    def evaluate(self):
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        detections = defaultdict(list)  # class id -> [(image id, score, box)]
        for per_rank in gathered:
            for class_id, lines in per_rank.items():
                for line in lines:
                    image, score, *box = line.split()
                    detections[class_id].append((image, float(score), [float(v) for v in box]))
        with open(self._image_set_path) as f:
            image_ids = [line.strip() for line in f if line.strip()]
        ground_truth = defaultdict(lambda: defaultdict(list))  # class name -> image -> boxes
        for image in image_ids:
            for name, box, difficult in _read_voc_objects(self._anno_file_template.format(image)):
                ground_truth[name][image].append((box, difficult))
        aps = defaultdict(list)
        for class_id, name in enumerate(self._class_names):
            for threshold in range(50, 100, 5):
                ap = voc_class_ap(
                    detections.get(class_id, []), ground_truth[name], threshold / 100, self._is_2007
                )
                aps[threshold].append(ap * 100)
        mean_ap = {t: float(np.mean(v)) for t, v in aps.items()}
        return OrderedDict(
            bbox={
                "AP": float(np.mean(list(mean_ap.values()))),
                "AP50": mean_ap[50],
                "AP75": mean_ap[75],
            }
        )
