"""
Test-time augmentation for ATSS: multi-scale and horizontal-flip views of each image, detections
mapped into one frame and merged by class-aware NMS, box voting or soft voting.

The voting merges and the per-view object-size ranges follow the authors' multi-scale test
(sfzhang15/ATSS ``atss_core/engine/bbox_aug_vote.py``, ``TEST.BBOX_AUG.VOTE True``):

- every view runs the plain model (per-class NMS, ``TEST.DETECTIONS_PER_IMAGE`` kept);
- a view keeps only the boxes whose area ``w * h`` in the view's own pixels lies strictly
  between ``lo**2`` and ``hi**2`` for its size range ``(lo, hi)``, so large objects are taken
  from the small views and small objects from the large ones;
- all boxes are mapped into the frame of the first view (the authors' ``INPUT.MIN_SIZE_TEST``
  view), where, class by class, the highest-scoring box and every remaining box with IoU >=
  ``TTA_VOTE_THRESH`` with it form a cluster, replaced by the score-weighted mean box with the
  cluster's highest score ("vote"); "soft_vote" also keeps each member with its score decayed
  to ``score * (1 - IoU)`` when that is still >= ``TTA_SOFT_VOTE_SCORE_THRESH``;
- the detections with the ``k`` highest scores over all classes are kept, ties at the k-th
  included.

With the "+1" convention (``MODEL.ATSS.LEGACY_PLUS_ONE``, always on in the authors' code) widths
are ``x2 - x1 + 1`` in the IoUs and areas above, and a flipped view maps ``x`` back to
``W - 1 - x``.
"""

import logging
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.transforms import (
    HFlipTransform,
    NoOpTransform,
    ResizeShortestEdge,
    ResizeTransform,
    TransformList,
)
from detectron2.layers import cat
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .atss import ATSS, class_aware_nms
from .matcher import candidate_ious

__all__ = [
    "ATSSDatasetMapperTTA",
    "ATSSWithTTA",
    "PlusOneHFlipTransform",
    "box_vote",
    "in_size_range",
    "merge_detections",
]

logger = logging.getLogger(__name__)

MERGE_METHODS = ("nms", "vote", "soft_vote")
# Rows of the IoU matrix of box_vote computed at once (bounds the memory of its temporaries).
_IOU_ROWS = 512


def box_vote(
    boxes: Tensor,
    scores: Tensor,
    iou_thresh: float,
    *,
    soft_score_thresh: Optional[float] = None,
    plus_one: bool = False,
) -> Tuple[Tensor, Tensor]:
    """
    Box voting of the detections of one class, as the authors' multi-scale test merges them.

    Repeatedly, the highest-scoring remaining box and all remaining boxes whose IoU with it is
    >= ``iou_thresh`` (itself included) leave the pool as a cluster. A cluster of one box is
    kept as it is; a larger one becomes one box, the score-weighted mean of its members, with
    the score of its first (highest-scoring) member. With ``soft_score_thresh`` (soft voting),
    each member of a larger cluster is also kept with its own coordinates and its score times
    ``1 - IoU`` with the first member, if that is >= ``soft_score_thresh`` (the first member
    itself decays to 0).

    Args:
        boxes: Tensor (N, 4) XYXY; scores: Tensor (N,).
        plus_one: IoUs with widths ``x2 - x1 + 1``.

    Returns:
        boxes (D, 4) and scores (D,), D <= N without ``soft_score_thresh``, sorted by score.
    """
    if len(boxes) == 0:
        return boxes, scores
    # Stable: boxes of equal score are taken in their given order.
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, scores = boxes[order], scores[order]
    n = len(boxes)
    rows = [
        candidate_ious(boxes[i : i + _IOU_ROWS, None], boxes[None], plus_one) >= iou_thresh
        for i in range(0, n, _IOU_ROWS)
    ]
    joins = torch.cat(rows).cpu().numpy()  # (N, N): box j may join the cluster of box i
    np.fill_diagonal(joins, True)  # even a degenerate box whose IoU with itself is not a number
    # Best box first: each box still free leads a cluster of the free boxes that may join it.
    leader = np.empty(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    for i in range(n):
        if free[i]:
            members = free & joins[i]
            leader[members] = i
            free &= ~members
    leader = torch.from_numpy(leader).to(boxes.device)
    # Leaders in ascending index order, i.e. by decreasing score.
    leaders, cluster = torch.unique(leader, return_inverse=True)
    size = torch.bincount(cluster, minlength=len(leaders))
    total = scores.new_zeros(len(leaders)).index_add_(0, cluster, scores)
    voted = boxes.new_zeros(len(leaders), 4).index_add_(0, cluster, scores[:, None] * boxes)
    voted = voted / total[:, None]
    # A cluster of one keeps its box as it is; all-zero weights (0 / 0) keep the leader's box.
    alone = (size == 1) | (total <= 0)
    out_boxes = [torch.where(alone[:, None], boxes[leaders], voted)]
    out_scores = [scores[leaders]]
    if soft_score_thresh is not None:
        decayed = scores * (1 - candidate_ious(boxes[leader], boxes, plus_one))  # (N,)
        kept = (size[cluster] > 1) & (decayed >= soft_score_thresh)
        out_boxes.append(boxes[kept])
        out_scores.append(decayed[kept])
    boxes, scores = cat(out_boxes), cat(out_scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    return boxes[order], scores[order]


def in_size_range(boxes: Tensor, low: float, high: float, *, plus_one: bool = False) -> Tensor:
    """
    BoolTensor (N,): whether each box (Tensor (N, 4) XYXY) has ``low**2 < w * h < high**2``,
    both bounds excluded (the authors' per-scale filter), widths ``x2 - x1 (+ 1)``.
    """
    one = 1.0 if plus_one else 0.0
    area = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    return (area > low * low) & (area < high * high)


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    *,
    method: str = "nms",
    nms_thresh: float = 0.6,
    vote_thresh: float = 0.66,
    max_detections: int = 100,
    soft_vote_score_thresh: float = 0.05,
    plus_one: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Merge detections of several views of one image (already in one coordinate frame).

    Args:
        boxes: Tensor (M, 4) XYXY; scores: Tensor (M,); classes: LongTensor (M,).
        method: "nms": class-aware NMS at ``nms_thresh``, the ``max_detections`` best kept.
            "vote" / "soft_vote": :func:`box_vote` of each class at ``vote_thresh`` (soft:
            with ``soft_vote_score_thresh``), in place of NMS; then the detections scoring at
            least the ``max_detections``-th highest score are kept (ties included).
        plus_one: IoUs with widths ``x2 - x1 + 1`` (``MODEL.ATSS.LEGACY_PLUS_ONE``).

    Returns:
        boxes (D, 4), scores (D,), classes (D,), sorted by score.
    """
    if method not in MERGE_METHODS:
        raise ValueError(
            f"MODEL.ATSS.TTA_MERGE must be one of {', '.join(map(repr, MERGE_METHODS))}, "
            f"got {method!r}"
        )
    if method == "nms":
        keep = class_aware_nms(boxes, scores, classes, nms_thresh, plus_one)[:max_detections]
        return boxes[keep], scores[keep], classes[keep]

    # A loop over clusters: on the CPU, as the authors' (numpy) merge, instead of one
    # device synchronisation per cluster.
    device = boxes.device
    boxes, scores, classes = boxes.cpu(), scores.cpu(), classes.cpu()
    soft = soft_vote_score_thresh if method == "soft_vote" else None
    out_boxes, out_scores, out_classes = [boxes[:0]], [scores[:0]], [classes[:0]]
    for c in torch.unique(classes).tolist():
        in_class = classes == c
        b, s = box_vote(
            boxes[in_class],
            scores[in_class],
            vote_thresh,
            soft_score_thresh=soft,
            plus_one=plus_one,
        )
        out_boxes.append(b)
        out_scores.append(s)
        out_classes.append(torch.full_like(s, c, dtype=classes.dtype))
    boxes, scores, classes = cat(out_boxes), cat(out_scores), cat(out_classes)
    if len(scores) > max_detections > 0:
        kth_best = scores.topk(max_detections).values[-1]
        keep = scores >= kth_best
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    return boxes[order].to(device), scores[order].to(device), classes[order].to(device)


class PlusOneHFlipTransform(HFlipTransform):
    """Horizontal flip whose coordinates map ``x`` to ``W - 1 - x``: pixel indices, as
    maskrcnn-benchmark's ``BoxList.transpose`` flips boxes (``MODEL.ATSS.LEGACY_PLUS_ONE``)."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = self.width - 1 - coords[:, 0]
        return coords


class ATSSDatasetMapperTTA:
    """
    The views of one image for :class:`ATSSWithTTA`: for each short side
    ``min_sizes[i]`` (long side at most ``max_sizes[i]``), the resized image and, if ``flip``,
    its horizontal flip. With the defaults these are detectron2's ``DatasetMapperTTA`` views.

    Each returned dict is the input's with "image" (the view, uint8 (C, H, W)),
    "transforms" (a ``TransformList`` from the original image to the view) and "size_range"
    (``(low, high)`` of :func:`in_size_range`, or None: keep every box).
    """

    @configurable
    def __init__(
        self,
        *,
        min_sizes: Sequence[int],
        max_size: int,
        flip: bool,
        max_sizes: Sequence[int] = (),
        size_ranges: Sequence[Sequence[float]] = (),
        plus_one: bool = False,
    ):
        """
        Args:
            min_sizes: short side of each scale.
            max_size: longest side of every scale, unless ``max_sizes`` is given.
            flip: add the horizontally flipped image of every scale.
            max_sizes: longest side of each scale (one per ``min_sizes`` entry), or empty.
            size_ranges: ``(low, high)`` object sizes each scale keeps (one per ``min_sizes``
                entry), or empty for no filtering.
            plus_one: flipped views map ``x`` back to ``W - 1 - x``.
        """
        for name, values in (("max_sizes", max_sizes), ("size_ranges", size_ranges)):
            if len(values) not in (0, len(min_sizes)):
                raise ValueError(
                    f"{name} has {len(values)} entries; expected one per min_sizes entry "
                    f"({len(min_sizes)}) or none"
                )
        self.min_sizes = list(min_sizes)
        self.max_sizes = list(max_sizes) or [max_size] * len(self.min_sizes)
        self.size_ranges = [tuple(r) for r in size_ranges] or [None] * len(self.min_sizes)
        self.flip = flip
        self.flip_transform = PlusOneHFlipTransform if plus_one else HFlipTransform

    @classmethod
    def from_config(cls, cfg):
        return {
            "min_sizes": cfg.TEST.AUG.MIN_SIZES,
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
            "max_sizes": cfg.MODEL.ATSS.TTA_MAX_SIZES,
            "size_ranges": cfg.MODEL.ATSS.TTA_SCALE_RANGES,
            "plus_one": cfg.MODEL.ATSS.LEGACY_PLUS_ONE,
        }

    def __call__(self, dataset_dict: Dict) -> List[Dict]:
        """
        Args:
            dataset_dict: with "image" (uint8 (C, H, W)) and "height", "width" (the original
                size, of which "image" may be a resize).
        """
        image = dataset_dict["image"].permute(1, 2, 0).numpy()  # (H, W, C)
        orig_shape = (dataset_dict["height"], dataset_dict["width"])
        if image.shape[:2] != orig_shape:
            pre = ResizeTransform(*orig_shape, *image.shape[:2])
        else:
            pre = NoOpTransform()
        views = []
        for min_size, max_size, size_range in zip(self.min_sizes, self.max_sizes, self.size_ranges):
            resize = ResizeShortestEdge(min_size, max_size, sample_style="choice")
            resize = resize.get_transform(image)
            resized = resize.apply_image(image)
            tfms = [(TransformList([pre, resize]), resized)]
            if self.flip:
                flip = self.flip_transform(resized.shape[1])
                tfms.append((TransformList([pre, resize, flip]), flip.apply_image(resized)))
            for transforms, view_image in tfms:
                view = {k: v for k, v in dataset_dict.items() if k != "image"}
                view["image"] = torch.from_numpy(
                    np.ascontiguousarray(view_image.transpose(2, 0, 1))
                )
                view["transforms"] = transforms
                view["size_range"] = size_range
                views.append(view)
        return views


class ATSSWithTTA(nn.Module):
    """
    An :class:`ATSS` model with test-time augmentation. Called like the model in inference:
    ``list[dict]`` in, ``[{"instances": Instances}]`` out, boxes in the coordinates of each
    input's ("height", "width") (its image size when absent).

    The model runs on every view of :class:`ATSSDatasetMapperTTA` (``TEST.AUG.MIN_SIZES``,
    ``MODEL.ATSS.TTA_MAX_SIZES`` or ``TEST.AUG.MAX_SIZE``, ``TEST.AUG.FLIP``; views of equal
    size batched together, so no view is padded more than alone); each view keeps the boxes of
    its ``size_range`` (``MODEL.ATSS.TTA_SCALE_RANGES``); boxes go back through each view's
    inverse transforms and into the frame of the first view, where the union is merged by
    :func:`merge_detections` (``MODEL.ATSS.TTA_MERGE``), keeping
    ``MODEL.ATSS.TTA_DETECTIONS_PER_IMAGE`` (0: ``TEST.DETECTIONS_PER_IMAGE``).
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        tta_mapper,
        merge: str = "nms",
        nms_thresh: float = 0.6,
        vote_thresh: float = 0.66,
        soft_vote_score_thresh: float = 0.05,
        max_detections_per_image: int = 100,
        plus_one: bool = False,
        batch_size: int = 3,
    ):
        """
        Args:
            model: the ATSS model (a DistributedDataParallel wrapper is unwrapped).
            tta_mapper: callable taking one input dict (with "image", "height", "width") and
                returning the augmented dicts, each with "image" and "transforms" (a
                ``TransformList`` from the original image to the view) and optionally
                "size_range", e.g. :class:`ATSSDatasetMapperTTA` or detectron2's
                ``DatasetMapperTTA``.
            merge, nms_thresh, vote_thresh, soft_vote_score_thresh, plus_one: see
                :func:`merge_detections`; ``plus_one`` also applies to the size ranges.
            max_detections_per_image: ``max_detections`` of :func:`merge_detections`.
            batch_size: views run through the model at once.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, ATSS):
            raise TypeError(f"ATSSWithTTA needs an ATSS model, got {type(model).__name__}")
        if merge not in MERGE_METHODS:
            raise ValueError(
                f"MODEL.ATSS.TTA_MERGE must be one of {', '.join(map(repr, MERGE_METHODS))}, "
                f"got {merge!r}"
            )
        self.model = model
        self.tta_mapper = tta_mapper
        self.merge = merge
        self.nms_thresh = nms_thresh
        self.vote_thresh = vote_thresh
        self.soft_vote_score_thresh = soft_vote_score_thresh
        self.max_detections_per_image = max_detections_per_image
        self.plus_one = plus_one
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, model, tta_mapper=None, batch_size: int = 3):
        a = cfg.MODEL.ATSS
        return {
            "model": model,
            "tta_mapper": tta_mapper if tta_mapper is not None else ATSSDatasetMapperTTA(cfg),
            "merge": a.TTA_MERGE,
            "nms_thresh": a.NMS_THRESH_TEST,
            "vote_thresh": a.TTA_VOTE_THRESH,
            "soft_vote_score_thresh": a.TTA_SOFT_VOTE_SCORE_THRESH,
            "max_detections_per_image": a.TTA_DETECTIONS_PER_IMAGE or cfg.TEST.DETECTIONS_PER_IMAGE,
            "plus_one": a.LEGACY_PLUS_ONE,
            "batch_size": batch_size,
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """
        Args:
            batched_inputs: model inputs; "image" is a CPU (C, H, W) tensor (what detectron2's
                test loader gives), optional "height"/"width" the output resolution.
        """
        return [{"instances": self._inference_one_image(x)} for x in batched_inputs]

    def _inference_one_image(self, input: Dict) -> Instances:
        input = dict(input)
        input.setdefault("height", input["image"].shape[-2])
        input.setdefault("width", input["image"].shape[-1])
        height, width = input["height"], input["width"]
        views = self.tta_mapper(input)
        view_results = self._run_views(views)

        # The merge frame: the first view's image (the authors resize every view's boxes to it).
        ref_h, ref_w = views[0]["image"].shape[-2:]
        to_ref = np.array([ref_w / width, ref_h / height] * 2, dtype=np.float32)
        boxes, scores, classes = [], [], []
        for view, result in zip(views, view_results):
            view_boxes = result.pred_boxes.tensor
            if view.get("size_range") is not None:
                keep = in_size_range(view_boxes, *view["size_range"], plus_one=self.plus_one)
                view_boxes, result = view_boxes[keep], result[keep]
            # Back to the original image (undo the flip, then the resize), then to the frame.
            original = view["transforms"].inverse().apply_box(view_boxes.detach().cpu().numpy())
            ref = torch.as_tensor(original * to_ref, dtype=view_boxes.dtype)
            boxes.append(ref.to(view_boxes.device))
            scores.append(result.scores)
            classes.append(result.pred_classes)
        boxes, scores, classes = merge_detections(
            cat(boxes),
            cat(scores),
            cat(classes),
            method=self.merge,
            nms_thresh=self.nms_thresh,
            vote_thresh=self.vote_thresh,
            max_detections=self.max_detections_per_image,
            soft_vote_score_thresh=self.soft_vote_score_thresh,
            plus_one=self.plus_one,
        )
        merged = Instances((ref_h, ref_w))
        merged.pred_boxes = Boxes(boxes)
        merged.scores = scores
        merged.pred_classes = classes
        # To the output size; clipped, empty boxes dropped, as the plain model's postprocessing.
        return detector_postprocess(merged, height, width)

    @torch.no_grad()
    def _run_views(self, views: List[Dict]) -> List[Instances]:
        """Detections of each view in its own coordinates, views of one size batched."""
        by_shape: Dict[Tuple[int, ...], List[int]] = defaultdict(list)
        for i, view in enumerate(views):
            by_shape[tuple(view["image"].shape)].append(i)
        results: List[Instances] = [None] * len(views)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                # No "height"/"width": outputs stay in the view's coordinates.
                outputs = self.model([{"image": views[i]["image"]} for i in chunk])
                for i, out in zip(chunk, outputs):
                    results[i] = out["instances"]
        return results
