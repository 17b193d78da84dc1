"""The ATSS meta-architecture: a detectron2 ``DenseDetector`` with adaptive sample selection."""

import itertools
import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn

from ..config_checks import ConfigError, check_atss_config
from .box_coder import ATSSBoxCoder, ATSSPointCoder
from .cuda_graphs import CUDAGraphCache
from .head import ATSSHead
from .losses import centerness_target, giou_loss, reduce_mean
from .matcher import ATSSMatcher

__all__ = ["ATSS"]

logger = logging.getLogger(__name__)


def _event_storage():
    """The active EventStorage (always there during training with a trainer), or None."""
    try:
        return get_event_storage()
    except AssertionError:
        return None


@META_ARCH_REGISTRY.register()
class ATSS(DenseDetector):
    """
    ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
    Adaptive Training Sample Selection", CVPR 2020): one square anchor per location, positives
    chosen per GT by the mean + std IoU rule, focal loss, centerness-weighted GIoU loss and
    centerness BCE.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box_coder,
        matcher: ATSSMatcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        reg_loss_weight: float = 2.0,
        reg_norm_clamp: bool = True,
        num_pos_norm: str = "per_image",
        valid_anchors_per_image: bool = True,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        candidate_ranking: str = "cls",
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        score_mode: str = "sqrt",
        legacy_plus_one: bool = False,
        size_divisibility: int = 32,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        cuda_graphs_max_shapes: int = 8,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone, head, head_in_features: as in :class:`DenseDetector`; ``head`` returns
                (logits, box regression, centerness) per level.
            anchor_generator: gives one set of anchors per level.
            box_coder: :class:`ATSSBoxCoder` or :class:`ATSSPointCoder`.
            matcher: :class:`ATSSMatcher`.
            num_classes: foreground classes.
            focal_loss_alpha, focal_loss_gamma: sigmoid focal loss parameters.
            reg_loss_weight: weight of the GIoU loss.
            reg_norm_clamp: clamp the box-loss normaliser (sum of centerness targets) at >= 1.
            num_pos_norm: normaliser of the classification and centerness losses: "per_image"
                (sum over images of max(positives, 1), mmdetection) or "total" (positives of
                the batch floored at 1 once, the authors); both averaged over workers.
            valid_anchors_per_image: train each image on the anchors inside its own padded
                extent only (mmdetection); False: on every anchor of the padded batch (the
                authors). See :meth:`valid_anchors`.
            test_score_thresh: keep (anchor, class) pairs with class probability above this.
            test_topk_candidates: candidates kept per level before NMS.
            candidate_ranking: "cls" ranks them by class probability, "cls_ctr" by class
                probability x centerness.
            test_nms_thresh: class-aware NMS IoU threshold.
            max_detections_per_image: detections kept per image after NMS.
            score_mode: "sqrt" (sqrt(p_cls * p_ctr)) or "product" (p_cls * p_ctr).
            legacy_plus_one: the authors' "+1" box conventions (clip to W - 1, GIoU details).
            size_divisibility: images are padded to a multiple of this (32 in both references).
            channels_last: keep the convolution weights and the input batch in the
                channels-last memory format (``torch.channels_last``); same results.
            cuda_graphs: at inference on CUDA, replay the backbone and head from a CUDA graph
                captured once per padded input shape (:class:`CUDAGraphCache`); the decoding,
                top-k and NMS stay eager. Same detections; fewer kernel launches from Python.
            cuda_graphs_max_shapes: graphs kept (least recently used dropped first); each holds
                the activations of one forward pass at its shape.
            pixel_mean, pixel_std, input_format: input normalisation and channel order.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if score_mode not in ("sqrt", "product"):
            raise ValueError(
                f"MODEL.ATSS.SCORE_MODE must be 'sqrt' or 'product', got {score_mode!r}"
            )
        if num_pos_norm not in ("per_image", "total"):
            raise ValueError(
                f"MODEL.ATSS.NUM_POS_NORM must be 'per_image' or 'total', got {num_pos_norm!r}"
            )
        for arg, key, value in (
            ("test_score_thresh", "SCORE_THRESH_TEST", test_score_thresh),
            ("test_nms_thresh", "NMS_THRESH_TEST", test_nms_thresh),
            ("focal_loss_alpha", "FOCAL_LOSS_ALPHA", focal_loss_alpha),
        ):
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise ValueError(f"{arg} (MODEL.ATSS.{key}) must be in [0, 1], got {value!r}")
        for arg, key, value in (
            ("test_topk_candidates", "MODEL.ATSS.TOPK_CANDIDATES_TEST", test_topk_candidates),
            ("max_detections_per_image", "TEST.DETECTIONS_PER_IMAGE", max_detections_per_image),
            ("num_classes", "MODEL.ATSS.NUM_CLASSES", num_classes),
        ):
            if not value >= 1:
                raise ValueError(f"{arg} ({key}) must be >= 1, got {value!r}")
        if candidate_ranking not in ("cls", "cls_ctr"):
            raise ValueError(
                "MODEL.ATSS.CANDIDATE_RANKING_TEST must be 'cls' or 'cls_ctr', "
                f"got {candidate_ranking!r}"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.reg_loss_weight = reg_loss_weight
        self.reg_norm_clamp = reg_norm_clamp
        self.num_pos_norm = num_pos_norm
        self.valid_anchors_per_image = valid_anchors_per_image
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.candidate_ranking = candidate_ranking
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.score_mode = score_mode
        self.legacy_plus_one = legacy_plus_one
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.channels_last = channels_last
        # Not a submodule: the state dict and parameters are those of the model without it.
        self.cuda_graphs = CUDAGraphCache(cuda_graphs_max_shapes) if cuda_graphs else None
        if channels_last:
            # Checkpoint loading copies into these tensors, which keeps their memory format.
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        check_atss_config(cfg)  # a sentence naming the key, before any constructor fails
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in cfg.MODEL.ATSS.IN_FEATURES if f not in backbone_shape]
        if missing:
            raise ConfigError(
                f"MODEL.ATSS.IN_FEATURES names {missing}, which the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not output (it has {sorted(backbone_shape)})"
            )
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.ATSS.IN_FEATURES]
        head = ATSSHead(cfg, feature_shapes)
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        legacy = cfg.MODEL.ATSS.LEGACY_PLUS_ONE
        if cfg.MODEL.ATSS.REGRESSION_TYPE == "POINT":
            sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
            strides = [s.stride for s in feature_shapes]
            scale = sizes[0][0] / strides[0]
            box_coder = ATSSPointCoder(scale, legacy_plus_one=legacy)
        else:
            box_coder = ATSSBoxCoder(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS, legacy_plus_one=legacy)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": cfg.MODEL.ATSS.IN_FEATURES,
            "anchor_generator": anchor_generator,
            "box_coder": box_coder,
            "matcher": ATSSMatcher(
                cfg.MODEL.ATSS.TOPK,
                force_one_positive=cfg.MODEL.ATSS.FORCE_ONE_POSITIVE,
                gt_chunk_size=cfg.MODEL.ATSS.MATCHER_GT_CHUNK,
                plus_one=legacy,
            ),
            "num_classes": cfg.MODEL.ATSS.NUM_CLASSES,
            "focal_loss_alpha": cfg.MODEL.ATSS.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.ATSS.FOCAL_LOSS_GAMMA,
            "reg_loss_weight": cfg.MODEL.ATSS.REG_LOSS_WEIGHT,
            "reg_norm_clamp": cfg.MODEL.ATSS.REG_NORM_CLAMP,
            "num_pos_norm": cfg.MODEL.ATSS.NUM_POS_NORM,
            "valid_anchors_per_image": cfg.MODEL.ATSS.VALID_ANCHORS_PER_IMAGE,
            "test_score_thresh": cfg.MODEL.ATSS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST,
            "candidate_ranking": cfg.MODEL.ATSS.CANDIDATE_RANKING_TEST,
            "test_nms_thresh": cfg.MODEL.ATSS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "score_mode": cfg.MODEL.ATSS.SCORE_MODE,
            "legacy_plus_one": legacy,
            "size_divisibility": cfg.MODEL.ATSS.SIZE_DIVISIBILITY,
            "channels_last": cfg.MODEL.ATSS.CHANNELS_LAST,
            "cuda_graphs": cfg.MODEL.ATSS.CUDA_GRAPHS,
            "cuda_graphs_max_shapes": cfg.MODEL.ATSS.CUDA_GRAPHS_MAX_SHAPES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalize and pad to ``size_divisibility`` (32 as in both references, where
        detectron2's FPN would pad to P7's stride, 128)."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.channels_last:
            tensor = images.tensor.contiguous(memory_format=torch.channels_last)
            images = ImageList(tensor, images.image_sizes)
        return images

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """:meth:`DenseDetector.forward`; with ``cuda_graphs``, inference runs the backbone and
        head through :attr:`cuda_graphs` (eager where a graph cannot be used, e.g. on the CPU
        or with autograd recording)."""
        if self.training or self.cuda_graphs is None or torch.jit.is_scripting():
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features, predictions = self.cuda_graphs(
            self._features_and_predictions,
            images.tensor,
            params=itertools.chain(self.parameters(), self.buffers()),
        )
        results = self.forward_inference(images, features, predictions)
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def _features_and_predictions(self, tensor: Tensor):
        features = self.backbone(tensor)
        features = [features[f] for f in self.head_in_features]
        return features, self.head(features)

    # ------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        valid = None
        if self.valid_anchors_per_image:
            valid = self.valid_anchors(images.image_sizes, features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, valid)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr)

    def valid_anchors(
        self, image_sizes: List[Tuple[int, int]], features: List[Tensor]
    ) -> Optional[Tensor]:
        """
        The anchors inside each image's own padded extent, as mmdetection's
        ``AnchorGenerator.valid_flags`` with the image's ``pad_shape`` (its size rounded up to
        ``size_divisibility``, as ``DetDataPreprocessor`` pads it): on a level of stride s and
        an H x W feature map, the anchors of the cells (i, j) with i < min(ceil(pad_h / s), H)
        and j < min(ceil(pad_w / s), W). ``ATSSHead`` (``allowed_border=-1``) assigns and trains
        each image on those alone.

        Args:
            image_sizes: (h, w) of each image before padding; features: per level (N, C, H, W).

        Returns:
            bool Tensor (N, R) on the CPU, levels concatenated as the anchors are; None when
            every anchor is valid for every image (e.g. images of one size).
        """
        gen = self.anchor_generator
        d = self.size_divisibility
        pads = [[_round_up(int(h), d), _round_up(int(w), d)] for h, w in image_sizes]
        masks, all_valid = [], True
        for feature, stride, per_cell in zip(features, gen.strides, gen.num_cell_anchors):
            height, width = (int(x) for x in feature.shape[-2:])
            limits = [
                [min(math.ceil(h / stride), height), min(math.ceil(w / stride), width)]
                for h, w in pads
            ]
            all_valid &= all(lim == [height, width] for lim in limits)
            limits = torch.tensor(limits, dtype=torch.long)  # (N, 2)
            rows = torch.arange(height)[None, :, None] < limits[:, 0, None, None]  # (N, H, 1)
            cols = torch.arange(width)[None, None, :] < limits[:, 1, None, None]  # (N, 1, W)
            cells = (rows & cols).reshape(len(pads), height * width, 1)
            # Anchors are location-major with the cell anchors inner, as the generator lays them.
            masks.append(cells.expand(-1, -1, per_cell).reshape(len(pads), -1))
        return None if all_valid else torch.cat(masks, dim=1)

    @torch.no_grad()
    def label_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        valid: Optional[Tensor] = None,
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            anchors: per level Boxes (R_l, 4); gt_instances: per image, with gt_boxes and
                gt_classes.
            valid: optional bool (N, R), the anchors valid for each image
                (:meth:`valid_anchors`): the others are never candidates and are ignored (-1).

        Returns:
            gt_labels: per image, LongTensor (R,): class index for positives, ``num_classes``
                for background, -1 for ignored anchors.
            matched_gt_boxes: per image, Tensor (R, 4): the matched GT box (meaningful for
                positives only).
        """
        matches, thresholds = self.matcher.match_batch(
            anchors, [x.gt_boxes for x in gt_instances], valid
        )
        # (N, R) GT indices within each image -> indices into the batch's concatenated GTs.
        counts = [len(x) for x in gt_instances]
        first = torch.tensor([0] + counts[:-1], dtype=torch.long).cumsum(0)
        first = first.to(matches.device, non_blocking=True)
        positive = matches >= 0
        if sum(counts) > 0:
            idx = torch.where(positive, matches + first[:, None], 0)
            labels = torch.cat([x.gt_classes for x in gt_instances])[idx]
            boxes = torch.cat([x.gt_boxes.tensor for x in gt_instances])[idx]
        else:
            labels = torch.zeros_like(matches)
            boxes = torch.zeros(*matches.shape, 4, device=matches.device)
        labels = torch.where(positive, labels, self.num_classes)
        labels = torch.where(matches == ATSSMatcher.IGNORE, -1, labels)
        storage = _event_storage()
        if storage is not None:
            # One device-to-host copy for both statistics.
            stats = [positive.sum(dim=1).float().mean()]
            thresholds = torch.cat(thresholds)
            if len(thresholds):
                stats.append(thresholds.mean())
            names = ["atss/num_pos_per_image", "atss/iou_threshold_mean"]
            storage.put_scalars(**dict(zip(names, torch.stack(stats).tolist())))
        gt_labels, matched_boxes = list(labels.unbind(0)), list(boxes.unbind(0))
        return gt_labels, matched_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr):
        """
        Args:
            anchors: per level Boxes (R_l, 4); pred_logits, pred_deltas, pred_ctr: per level
                (N, R_l, K), (N, R_l, 4), (N, R_l, 1); gt_labels, gt_boxes: per image, from
                :meth:`label_anchors`.

        Returns:
            dict with "loss_cls" (focal loss summed over the anchors labelled >= 0) and
            "loss_centerness" (BCE summed over the positives), both divided by the
            ``num_pos_norm`` normaliser, and "loss_box_reg" (GIoU weighted by the centerness
            targets, divided by their sum averaged over workers, clamped per
            ``reg_norm_clamp``).
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid = gt_labels >= 0
        pos = valid & (gt_labels != self.num_classes)
        num_pos = pos.sum(dim=1).float()  # (N,)
        if self.num_pos_norm == "per_image":
            # mmdetection: each image counts max(positives, 1) (SamplingResult.avg_factor),
            # summed over the batch, then averaged over workers.
            normalizer = reduce_mean(num_pos.clamp(min=1.0).sum())
        else:
            # The authors: positives of the batch averaged over workers, floored at 1.
            normalizer = reduce_mean(num_pos.sum()).clamp(min=1.0)

        logits = cat(pred_logits, dim=1)[valid].float()  # (V, K)
        target = F.one_hot(gt_labels[valid], self.num_classes + 1)[:, :-1].to(logits.dtype)
        loss_cls = (
            sigmoid_focal_loss_jit(
                logits,
                target,
                alpha=self.focal_loss_alpha,
                gamma=self.focal_loss_gamma,
                reduction="sum",
            )
            / normalizer
        )

        deltas = cat(pred_deltas, dim=1).float()  # (N, R, 4)
        ctr_logits = cat(pred_ctr, dim=1).float().squeeze(2)  # (N, R)
        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        pos_anchors = all_anchors[None].expand(len(gt_labels), -1, -1)[pos]  # (P, 4)
        pos_gt = torch.stack(gt_boxes)[pos].float()  # (P, 4)
        ctr_targets = centerness_target(pos_anchors, pos_gt)  # (P,)
        # All-reduced on every worker, positives or not, so that no worker waits forever.
        ctr_sum = reduce_mean(ctr_targets.sum())
        if pos.any():
            pred_boxes = self.box_coder.apply_deltas(deltas[pos], pos_anchors)
            giou = giou_loss(pred_boxes, pos_gt, legacy=self.legacy_plus_one)
            box_norm = ctr_sum.clamp(min=1.0) if self.reg_norm_clamp else ctr_sum.clamp(min=1e-6)
            loss_box = self.reg_loss_weight * (giou * ctr_targets).sum() / box_norm
            loss_ctr = (
                F.binary_cross_entropy_with_logits(ctr_logits[pos], ctr_targets, reduction="sum")
                / normalizer
            )
        else:
            # Zero, but connected to the graph so that DDP sees a gradient for every parameter.
            loss_box = deltas.sum() * 0
            loss_ctr = ctr_logits.sum() * 0
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box, "loss_centerness": loss_ctr}

    # ------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            results.append(
                self.inference_single_image(
                    anchors,
                    [x[img_idx] for x in pred_logits],
                    [x[img_idx] for x in pred_deltas],
                    [x[img_idx] for x in pred_ctr],
                    image_size,
                )
            )
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        logits: List[Tensor],
        deltas: List[Tensor],
        ctr: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Args:
            anchors: per level Boxes (R_l, 4); logits, deltas, ctr: per level (R_l, K),
                (R_l, 4), (R_l, 1) of one image; image_size: (h, w) of the resized image.

        Returns:
            Instances with pred_boxes, scores and pred_classes, at most
            ``max_detections_per_image``, sorted by score.
        """
        boxes_all, scores_all, classes_all = [], [], []
        for anchors_l, logits_l, deltas_l, ctr_l in zip(anchors, logits, deltas, ctr):
            cls_prob = logits_l.float().sigmoid()  # (R_l, K)
            ctr_prob = ctr_l.float().sigmoid()  # (R_l, 1)
            keep = cls_prob > self.test_score_thresh
            if self.candidate_ranking == "cls":
                ranking = cls_prob
            else:
                ranking = cls_prob * ctr_prob
            # The best top-k of the pairs above the threshold, found as the top-k of all pairs
            # with the others ranked below every probability: no sort of all kept pairs (on a
            # dense level a top-k is ~30x cheaper) and no data-dependent shapes before it.
            ranking = torch.where(keep, ranking, torch.full_like(ranking, -1.0)).flatten()
            _, flat_idx = ranking.topk(self._num_topk(ranking))
            flat_idx = flat_idx[keep.flatten()[flat_idx]]
            num_classes = cls_prob.shape[1]
            anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
            class_idx = flat_idx % num_classes
            p_cls = cls_prob[anchor_idx, class_idx]
            p_ctr = ctr_prob[anchor_idx, 0]
            boxes = self.box_coder.apply_deltas(
                deltas_l[anchor_idx].float(), anchors_l.tensor[anchor_idx]
            )
            boxes = self._clip(boxes, image_size)
            if not self.legacy_plus_one:
                nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                boxes, p_cls, p_ctr, class_idx = (
                    boxes[nonempty],
                    p_cls[nonempty],
                    p_ctr[nonempty],
                    class_idx[nonempty],
                )
            score = p_cls * p_ctr
            if self.score_mode == "sqrt":
                score = torch.sqrt(score)
            boxes_all.append(boxes)
            scores_all.append(score)
            classes_all.append(class_idx)
        boxes, scores, classes = cat(boxes_all), cat(scores_all), cat(classes_all)
        keep = class_aware_nms(boxes, scores, classes, self.test_nms_thresh, self.legacy_plus_one)
        keep = keep[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result

    def _num_topk(self, ranking: Tensor):
        """min(test_topk_candidates, ranking.numel()), kept symbolic while tracing so that an
        exported model neither caps nor overruns the top-k on images of other sizes."""
        if torch.jit.is_tracing():
            numel = torch._shape_as_tensor(ranking)[0]
            return torch.clamp(numel, max=self.test_topk_candidates)
        return min(self.test_topk_candidates, ranking.numel())

    def _clip(self, boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
        h, w = image_size
        one = 1 if self.legacy_plus_one else 0
        x = boxes[:, 0::2].clamp(min=0, max=w - one)
        y = boxes[:, 1::2].clamp(min=0, max=h - one)
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def class_aware_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, plus_one: bool = False
) -> Tensor:
    """
    detectron2's ``batched_nms`` (indices kept, by decreasing score); with ``plus_one``, IoUs
    with widths ``x2 - x1 + 1`` as maskrcnn-benchmark's NMS, which the authors' ATSS uses. That
    IoU equals the plain IoU of the boxes with ``x2`` and ``y2`` moved out by one pixel (every
    width, height and overlap grows by 1), so the boxes are shifted for the comparison only.
    """
    if plus_one:
        boxes = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    return batched_nms(boxes, scores, classes, iou_threshold)


def _round_up(size: int, divisor: int) -> int:
    """``size`` rounded up to a multiple of ``divisor`` (unchanged for divisor <= 1), as
    ``ImageList.from_tensors`` pads."""
    return -(-size // divisor) * divisor if divisor > 1 else size
