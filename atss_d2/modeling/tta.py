"""
Test-time augmentation for ATSS: multi-scale and horizontal-flip views of each image, detections
mapped back to the original image and merged by class-aware NMS or box voting.
"""

import logging
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .atss import ATSS

__all__ = ["ATSSWithTTA", "merge_detections"]

logger = logging.getLogger(__name__)


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    *,
    method: str = "nms",
    nms_thresh: float = 0.6,
    vote_thresh: float = 0.66,
    max_detections: int = 100,
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Merge detections of several views of one image (already in one coordinate frame).

    Args:
        boxes: Tensor (M, 4) XYXY; scores: Tensor (M,); classes: LongTensor (M,).
        method: "nms": class-aware NMS at ``nms_thresh``. "vote": the same NMS decides which
            detections survive (and their scores), then each surviving box becomes the
            score-weighted mean of all same-class boxes with IoU >= ``vote_thresh`` with it
            (itself included), as in the authors' multi-scale testing.
        max_detections: keep at most this many, highest score first.

    Returns:
        boxes (D, 4), scores (D,), classes (D,), D <= max_detections, sorted by score.
    """
    if method not in ("nms", "vote"):
        raise ValueError(f"MODEL.ATSS.TTA_MERGE must be 'nms' or 'vote', got {method!r}")
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections]
    kept_boxes = boxes[keep]
    if method == "vote" and len(keep) > 0:
        iou = pairwise_iou(Boxes(kept_boxes), Boxes(boxes))  # (D, M)
        same_class = classes[keep][:, None] == classes[None, :]  # (D, M)
        weights = scores[None, :] * ((iou >= vote_thresh) & same_class)  # (D, M)
        total = weights.sum(dim=1, keepdim=True)  # (D, 1)
        voted = (weights @ boxes) / total.clamp(min=1e-12)
        # A box whose voters all have score 0 keeps its own coordinates.
        kept_boxes = torch.where(total > 0, voted, kept_boxes)
    return kept_boxes, scores[keep], classes[keep]


class ATSSWithTTA(nn.Module):
    """
    An :class:`ATSS` model with test-time augmentation. Called like the model in inference:
    ``list[dict]`` in, ``[{"instances": Instances}]`` out, boxes in the coordinates of each
    input's ("height", "width") (its image size when absent).

    Each image is resized so that its short side is each of ``TEST.AUG.MIN_SIZES`` (long side at
    most ``TEST.AUG.MAX_SIZE``), and also flipped horizontally if ``TEST.AUG.FLIP``; the model
    runs on every view (views of equal size batched together, so no view is padded more than
    alone); boxes go back through each view's inverse transforms; the union is merged by
    :func:`merge_detections` (``MODEL.ATSS.TTA_MERGE``), keeping ``TEST.DETECTIONS_PER_IMAGE``.
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
        max_detections_per_image: int = 100,
        batch_size: int = 3,
    ):
        """
        Args:
            model: the ATSS model (a DistributedDataParallel wrapper is unwrapped).
            tta_mapper: callable taking one input dict (with "image", "height", "width") and
                returning the augmented dicts, each with "image" and "transforms" (a
                ``TransformList`` from the original image to the view), e.g.
                :class:`detectron2.modeling.DatasetMapperTTA`.
            merge, nms_thresh, vote_thresh, max_detections_per_image: see
                :func:`merge_detections`.
            batch_size: views run through the model at once.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, ATSS):
            raise TypeError(f"ATSSWithTTA needs an ATSS model, got {type(model).__name__}")
        if merge not in ("nms", "vote"):
            raise ValueError(f"MODEL.ATSS.TTA_MERGE must be 'nms' or 'vote', got {merge!r}")
        self.model = model
        self.tta_mapper = tta_mapper
        self.merge = merge
        self.nms_thresh = nms_thresh
        self.vote_thresh = vote_thresh
        self.max_detections_per_image = max_detections_per_image
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, model, tta_mapper=None, batch_size: int = 3):
        return {
            "model": model,
            "tta_mapper": tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg),
            "merge": cfg.MODEL.ATSS.TTA_MERGE,
            "nms_thresh": cfg.MODEL.ATSS.NMS_THRESH_TEST,
            "vote_thresh": cfg.MODEL.ATSS.TTA_VOTE_THRESH,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
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

        boxes, scores, classes = [], [], []
        for view, result in zip(views, view_results):
            view_boxes = result.pred_boxes.tensor
            # Back to the original image: undo the flip, then the resize.
            original = view["transforms"].inverse().apply_box(view_boxes.detach().cpu().numpy())
            boxes.append(torch.as_tensor(original, dtype=view_boxes.dtype).to(view_boxes.device))
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
        )
        merged = Instances((height, width))
        merged.pred_boxes = Boxes(boxes)
        merged.scores = scores
        merged.pred_classes = classes
        # Clip to the image and drop empty boxes, as the plain model's postprocessing does.
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
