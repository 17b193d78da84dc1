"""
Adaptive Training Sample Selection (Zhang et al., CVPR 2020, Sec. 3.1), as a pure function of
anchors and GT boxes.

The selection follows mmdetection's ``ATSSAssigner`` and the authors' code bit for bit (same
distance, IoU and statistics formulas), but computes IoUs only for the candidates (at most
``topk`` per level and GT) instead of the full anchors x GTs matrix, and processes the GTs in
chunks, so memory stays bounded with thousands of GTs in one image.
"""

from typing import List, NamedTuple, Optional

import torch
from detectron2.structures import Boxes
from torch import Tensor

__all__ = ["ATSSMatcher", "MatchResult", "candidate_ious"]

# IoU eps of mmdetection's bbox_overlaps: union is clamped at this value.
_IOU_EPS = 1e-6
# Anchor centres must be inside the GT by more than this (in pixels) on every side.
_INSIDE_EPS = 0.01


class MatchResult(NamedTuple):
    """
    matches: LongTensor (A,): GT index per anchor, ``ATSSMatcher.BACKGROUND`` (-1) or
        ``ATSSMatcher.IGNORE`` (-2, only with ignore boxes).
    thresholds: Tensor (G,): the IoU threshold mean + std of each GT's candidates.
    """

    matches: Tensor
    thresholds: Tensor


def candidate_ious(anchors: Tensor, gt: Tensor) -> Tensor:
    """
    Element-wise IoU of boxes with broadcastable shapes (..., 4), XYXY; same arithmetic as
    mmdetection's ``bbox_overlaps`` (union clamped at 1e-6), so results are bit-identical.
    """
    area1 = (anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])
    area2 = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    lt = torch.max(anchors[..., :2], gt[..., :2])
    rb = torch.min(anchors[..., 2:], gt[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).clamp(min=_IOU_EPS)
    return overlap / union


def _centers(boxes: Tensor) -> Tensor:
    """(N, 4) XYXY -> (N, 2) centres, computed as (x1 + x2) / 2 like both references."""
    return torch.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], dim=1
    )


class ATSSMatcher:
    """
    Label each anchor with the GT it is trained on, by the ATSS rule:

    1. for each GT and each level, the ``topk`` anchors whose centres are closest (L2) to the
       GT centre are candidates (fewer where a level has fewer anchors);
    2. the GT's IoU threshold is mean + std (Bessel-corrected) of its candidates' IoUs;
    3. a candidate with IoU >= threshold whose centre lies inside the GT (by more than 0.01 px
       on every side) is positive;
    4. an anchor positive for several GTs takes the one with the highest IoU (the lowest GT
       index on an exact tie).

    Calling the matcher returns a LongTensor with one entry per anchor (levels concatenated in
    order): the matched GT's index, or -1 for background. It is a pure function of its inputs.
    """

    BACKGROUND = -1
    IGNORE = -2

    def __init__(
        self,
        topk: int = 9,
        *,
        force_one_positive: bool = False,
        ignore_iof_thresh: float = 0.5,
        gt_chunk_size: int = 256,
    ):
        """
        Args:
            topk: candidates per level and GT.
            force_one_positive: give a GT left without any positive its highest-IoU candidate
                (if that IoU is > 0). Forced pairs win over ordinary ones; an anchor forced by
                two GTs goes to the higher IoU.
            ignore_iof_thresh: with ``ignore_boxes`` given at call time, anchors whose
                intersection-over-anchor-area with an ignore box exceeds this are never
                candidates and, unless positive, are labelled ``IGNORE`` (-2).
            gt_chunk_size: GTs processed at once; bounds memory, does not change the result.
        """
        if topk < 1:
            raise ValueError(f"ATSSMatcher: topk must be >= 1, got {topk}")
        if gt_chunk_size < 1:
            raise ValueError(f"ATSSMatcher: gt_chunk_size must be >= 1, got {gt_chunk_size}")
        self.topk = int(topk)
        self.force_one_positive = bool(force_one_positive)
        self.ignore_iof_thresh = float(ignore_iof_thresh)
        self.gt_chunk_size = int(gt_chunk_size)

    def __call__(
        self,
        anchors_per_level: List[Boxes],
        gt_boxes: Boxes,
        *,
        ignore_boxes: Optional[Boxes] = None,
    ) -> Tensor:
        """
        Args:
            anchors_per_level: anchors of each level, Boxes (A_l, 4) XYXY.
            gt_boxes: Boxes (G, 4) XYXY.
            ignore_boxes: optional Boxes (I, 4), e.g. crowd regions.

        Returns:
            LongTensor (sum A_l,): matched GT index, -1 background, -2 ignored.
        """
        return self.match(anchors_per_level, gt_boxes, ignore_boxes=ignore_boxes).matches

    @torch.no_grad()
    def match(
        self,
        anchors_per_level: List[Boxes],
        gt_boxes: Boxes,
        *,
        ignore_boxes: Optional[Boxes] = None,
    ) -> MatchResult:
        """Like ``__call__``, also returning each GT's IoU threshold."""
        level_tensors = [_as_tensor(a) for a in anchors_per_level]
        gt = _as_tensor(gt_boxes)
        if len(level_tensors) == 0:
            return MatchResult(torch.empty(0, dtype=torch.long, device=gt.device), gt.new_zeros(0))
        device = level_tensors[0].device
        anchors = torch.cat(level_tensors, dim=0)
        gt = gt.to(device=device, dtype=anchors.dtype)
        num_anchors, num_gt = anchors.shape[0], gt.shape[0]
        matches = torch.full((num_anchors,), self.BACKGROUND, dtype=torch.long, device=device)
        thresholds = anchors.new_zeros(num_gt)

        ignored = None
        if ignore_boxes is not None and len(ignore_boxes) > 0 and num_anchors > 0:
            ignored = self._ignored_anchors(anchors, _as_tensor(ignore_boxes).to(anchors))
        if num_anchors == 0 or num_gt == 0:
            if ignored is not None:
                matches[ignored] = self.IGNORE
            return MatchResult(matches, thresholds)

        anchor_ctr = _centers(anchors)  # (A, 2)
        level_sizes = [len(t) for t in level_tensors]
        # Best (priority-adjusted) IoU of each anchor over the GTs it is positive for so far.
        best = anchors.new_full((num_anchors,), float("-inf"))
        for start in range(0, num_gt, self.gt_chunk_size):
            chunk = gt[start : start + self.gt_chunk_size]  # (Gc, 4)
            cand, cand_iou, positive, thr = self._select(
                chunk, anchors, anchor_ctr, level_sizes, ignored
            )
            thresholds[start : start + len(chunk)] = thr
            score = cand_iou.clone()
            if self.force_one_positive:
                orphan = ~positive.any(dim=0)  # (Gc,)
                best_iou, best_idx = cand_iou.max(dim=0)
                orphan &= best_iou > 0
                cols = orphan.nonzero().squeeze(1)
                positive[best_idx[cols], cols] = True
                # forced pairs take precedence over ordinary ones (IoU <= 1 < 1 + IoU)
                score[best_idx[cols], cols] += 1.0
            self._update_best(matches, best, cand, score, positive, start)
        if ignored is not None:
            matches[ignored & (matches < 0)] = self.IGNORE
        return MatchResult(matches, thresholds)

    def _select(self, chunk, anchors, anchor_ctr, level_sizes, ignored):
        """
        Candidates of a chunk of GTs and their positive mask.

        Returns:
            cand: LongTensor (C, Gc) anchor indices; cand_iou: (C, Gc); positive: bool (C, Gc);
            thresholds: (Gc,).
        """
        gt_ctr = _centers(chunk)  # (Gc, 2)
        candidates = []
        start = 0
        for size in level_sizes:
            if size > 0:
                ctr = anchor_ctr[start : start + size]
                # Same formula as the references, so distance ties break identically.
                dist = (ctr[:, None, :] - gt_ctr[None, :, :]).pow(2).sum(-1).sqrt()  # (A_l, Gc)
                if ignored is not None:
                    dist[ignored[start : start + size]] = float("inf")
                k = min(self.topk, size)
                _, idx = dist.topk(k, dim=0, largest=False)  # (k, Gc)
                candidates.append(idx + start)
            start += size
        cand = torch.cat(candidates, dim=0)  # (C, Gc)
        cand_iou = candidate_ious(anchors[cand], chunk[None])  # (C, Gc)
        mean = cand_iou.mean(dim=0)
        # Bessel-corrected std; a single candidate (one anchor in the whole image) has no
        # spread, so its std is taken as 0 rather than NaN.
        std = cand_iou.std(dim=0) if cand.shape[0] > 1 else torch.zeros_like(mean)
        thr = mean + std
        positive = cand_iou >= thr[None, :]
        # Candidate centres strictly inside the GT.
        cx = anchor_ctr[cand, 0]
        cy = anchor_ctr[cand, 1]
        inside = (
            torch.stack(
                [cx - chunk[:, 0], cy - chunk[:, 1], chunk[:, 2] - cx, chunk[:, 3] - cy], dim=-1
            )
            .min(dim=-1)
            .values
            > _INSIDE_EPS
        )
        return cand, cand_iou, positive & inside, thr

    @staticmethod
    def _update_best(matches, best, cand, score, positive, gt_offset):
        """Assign each positive anchor of this chunk to its best GT, keeping earlier chunks'
        assignments on exact ties (they have lower GT indices)."""
        anchor_idx = cand[positive]  # (P,)
        if anchor_idx.numel() == 0:
            return
        gt_idx = positive.nonzero()[:, 1] + gt_offset  # row-major, same order as cand[positive]
        values = score[positive]
        chunk_best = torch.full_like(best, float("-inf"))
        chunk_best.scatter_reduce_(0, anchor_idx, values, reduce="amax")
        winner = values == chunk_best[anchor_idx]
        chunk_gt = torch.full_like(matches, torch.iinfo(torch.long).max)
        chunk_gt.scatter_reduce_(0, anchor_idx[winner], gt_idx[winner], reduce="amin")
        improved = chunk_best > best
        matches[improved] = chunk_gt[improved]
        best[improved] = chunk_best[improved]

    def _ignored_anchors(self, anchors: Tensor, ignore: Tensor) -> Tensor:
        """bool (A,): anchors whose intersection over their own area with some ignore box
        exceeds ``ignore_iof_thresh``."""
        area = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).clamp(
            min=_IOU_EPS
        )
        result = torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
        for start in range(0, len(ignore), self.gt_chunk_size):
            box = ignore[start : start + self.gt_chunk_size]
            lt = torch.max(anchors[:, None, :2], box[None, :, :2])
            rb = torch.min(anchors[:, None, 2:], box[None, :, 2:])
            wh = (rb - lt).clamp(min=0)
            iof = wh[..., 0] * wh[..., 1] / area[:, None]
            result |= (iof > self.ignore_iof_thresh).any(dim=1)
        return result


def _as_tensor(boxes) -> Tensor:
    return boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes).reshape(-1, 4)
