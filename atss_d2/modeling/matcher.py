"""
Adaptive Training Sample Selection (Zhang et al., CVPR 2020, Sec. 3.1), as a pure function of
anchors and GT boxes.

The selection follows mmdetection's ``ATSSAssigner`` and the authors' code bit for bit (same
distance, IoU and statistics formulas), but computes IoUs only for the candidates (at most
``topk`` per level and GT) instead of the full anchors x GTs matrix, and processes the GTs in
chunks, so memory stays bounded with thousands of GTs in one image.

Finding the candidates is the other cost of the references: the full anchors x GTs distance
matrix and a topk over every column. When a level's anchors form a regular grid (one anchor per
location, row-major, as detectron2's anchor generator lays them out), the ``topk`` nearest
centres of a GT lie in a small window of the grid around its centre, so only that window's
distances are computed. A GT keeps the window's answer only when it is provably the
reference's: the ``topk + 1`` smallest window distances are strictly increasing (no tie, so
any topk returns the same indices in the same order) and the ``topk``-th is smaller than a lower
bound on the distance of every anchor outside the window. Any other GT (ties, centres near or
beyond the border, ignored anchors in the way) falls back to the full column, computed as
before, so the assignments are unchanged.

In a padded batch of images of different sizes, ``match_batch`` takes the anchors that are valid
for each image (mmdetection's ``AnchorGenerator.valid_flags`` inside the image's own padded
extent; ``ATSSHead`` with ``allowed_border=-1`` trains on exactly those): the selection is then
that of the image's valid anchors alone, as mmdetection's ``ATSSAssigner`` sees them
(``flat_anchors[inside_flags]``, ``num_level_anchors_inside``): invalid anchors are never
candidates, a level with fewer valid anchors than ``topk`` gives only those, and the threshold
statistics run over the valid candidates.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.structures import Boxes
from torch import Tensor

__all__ = ["ATSSMatcher", "MatchResult", "candidate_ious"]

# IoU eps of mmdetection's bbox_overlaps: union is clamped at this value.
_IOU_EPS = 1e-6
# Anchor centres must be inside the GT by more than this (in pixels) on every side.
_INSIDE_EPS = 0.01
# Levels with fewer anchors than this many windows' worth get the full distance matrix: it is
# cheap there, and small grids would send many GTs to the fallback anyway.
_MIN_WINDOWS_PER_LEVEL = 16
# The windowed search costs a few dozen small ops per level; below this many (anchor, GT) pairs
# per level and chunk the full distance matrix is cheaper. On a GPU each op is a kernel launch
# and a full (A_l, 256) matrix is microseconds of work, so there it only pays with GT chunks far
# above the default MODEL.ATSS.MATCHER_GT_CHUNK (measured on an H100: 1000 GTs in chunks of 256,
# windowed on P3, 13.8 ms; 100 GTs in one full chunk, 2.2 ms).
_MIN_PAIRS_FOR_WINDOW = {"cpu": 1 << 18, "cuda": 1 << 25}


class MatchResult(NamedTuple):
    """
    matches: LongTensor (A,): GT index per anchor, ``ATSSMatcher.BACKGROUND`` (-1) or
        ``ATSSMatcher.IGNORE`` (-2: only with ignore boxes, or anchors not valid for the image).
    thresholds: Tensor (G,): the IoU threshold mean + std of each GT's candidates.
    """

    matches: Tensor
    thresholds: Tensor


def candidate_ious(anchors: Tensor, gt: Tensor, plus_one: bool = False) -> Tensor:
    """
    Element-wise IoU of boxes with broadcastable shapes (..., 4), XYXY; same arithmetic as
    mmdetection's ``bbox_overlaps`` (union clamped at 1e-6), so results are bit-identical.
    ``plus_one``: widths and heights ``x2 - x1 + 1`` (maskrcnn-benchmark's ``boxlist_iou``,
    which the authors' ATSS uses).
    """
    one = 1.0 if plus_one else 0.0
    area1 = (anchors[..., 2] - anchors[..., 0] + one) * (anchors[..., 3] - anchors[..., 1] + one)
    area2 = (gt[..., 2] - gt[..., 0] + one) * (gt[..., 3] - gt[..., 1] + one)
    lt = torch.max(anchors[..., :2], gt[..., :2])
    rb = torch.min(anchors[..., 2:], gt[..., 2:])
    wh = (rb - lt + one).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).clamp(min=_IOU_EPS)
    return overlap / union


def _centers(boxes: Tensor) -> Tensor:
    """(N, 4) XYXY -> (N, 2) centres, computed as (x1 + x2) / 2 like both references."""
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


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
        plus_one: bool = False,
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
            plus_one: IoUs with widths ``x2 - x1 + 1`` (the authors' code,
                ``MODEL.ATSS.LEGACY_PLUS_ONE``); centre distances and the centre-inside test
                are the same either way.
        """
        if topk < 1:
            raise ValueError(f"ATSSMatcher: topk must be >= 1, got {topk}")
        if gt_chunk_size < 1:
            raise ValueError(f"ATSSMatcher: gt_chunk_size must be >= 1, got {gt_chunk_size}")
        self.topk = int(topk)
        self.force_one_positive = bool(force_one_positive)
        self.ignore_iof_thresh = float(ignore_iof_thresh)
        self.gt_chunk_size = int(gt_chunk_size)
        self.plus_one = bool(plus_one)

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
        ignore = _as_tensor(ignore_boxes) if ignore_boxes is not None else None
        matches, thresholds = self._match_images(level_tensors, [gt], ignore)
        return MatchResult(matches[0], thresholds)

    @torch.no_grad()
    def match_batch(
        self,
        anchors_per_level: List[Boxes],
        gt_boxes_per_image: List[Boxes],
        valid: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor]]:
        """
        ``match`` for several images that share the anchors (one padded batch), with the GTs of
        all images processed together: the same results as one ``match`` per image, in a number
        of ops that does not grow with the batch size (on a GPU, each op is a kernel launch).

        Args:
            valid: optional bool (N, sum A_l), the anchors valid for each image (e.g. inside
                its own padded extent). Each image then gets the selection of its valid anchors
                alone (the same as ``match`` on those anchors, levels kept apart); its invalid
                anchors are labelled ``IGNORE``. Best kept on the CPU: the per-level counts are
                read there without waiting for the GPU.

        Returns:
            matches: LongTensor (N, sum A_l): per image, as ``match`` (GT indices within the
                image, -1 background, -2 for anchors not ``valid``).
            thresholds: per image, Tensor (G_i,).
        """
        level_tensors = [_as_tensor(a) for a in anchors_per_level]
        gts = [_as_tensor(g) for g in gt_boxes_per_image]
        if len(level_tensors) == 0:
            device = gts[0].device if gts else None
            empty = torch.empty(len(gts), 0, dtype=torch.long, device=device)
            return empty, [g.new_zeros(0) for g in gts]
        if valid is not None:
            num_anchors = sum(len(t) for t in level_tensors)
            if valid.dtype != torch.bool or tuple(valid.shape) != (len(gts), num_anchors):
                raise ValueError(
                    f"ATSSMatcher.match_batch: valid must be a bool tensor of shape "
                    f"({len(gts)}, {num_anchors}) (images, anchors), got {valid.dtype} "
                    f"{tuple(valid.shape)}"
                )
        matches, thresholds = self._match_images(level_tensors, gts, None, valid)
        return matches, list(thresholds.split([len(g) for g in gts]))

    def _match_images(
        self,
        level_tensors: List[Tensor],
        gts: List[Tensor],
        ignore: Optional[Tensor],
        valid: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Core of ``match`` / ``match_batch``: the GTs of all images, concatenated, go through
        the selection in chunks (each GT's candidates and threshold depend only on the anchors
        and that GT); the best GT per anchor is resolved per (image, anchor) pair.

        Args:
            ignore: (I, 4) ignore boxes shared by all images, or None.
            valid: bool (N, A) anchors valid per image, or None (all valid). Not together with
                ``ignore``.

        Returns:
            matches: LongTensor (N, A) of GT indices within each image; thresholds: (sum G_i,).
        """
        device = level_tensors[0].device
        anchors = torch.cat(level_tensors, dim=0)
        ignored = None
        if ignore is not None and len(ignore) > 0 and len(anchors) > 0:
            ignored = self._ignored_anchors(anchors, ignore.to(anchors))
        num_images, num_anchors = len(gts), anchors.shape[0]
        gt_counts = [len(g) for g in gts]
        num_gt = sum(gt_counts)
        level_sizes = [len(t) for t in level_tensors]
        # Copied without waiting for the device (``valid`` usually comes from the host).
        valid_here = valid.to(device, non_blocking=True) if valid is not None else None
        gt = torch.cat(gts, dim=0) if gts else anchors.new_zeros(0, 4)
        gt = gt.to(device=device, dtype=anchors.dtype)
        matches = torch.full(
            (num_images * num_anchors,), self.BACKGROUND, dtype=torch.long, device=device
        )
        thresholds = anchors.new_zeros(num_gt)
        if num_anchors > 0 and num_gt > 0:
            # Per GT: the offset of its image's anchors in the flat (N * A) arrays, and its
            # index within its image; built on the host and copied without waiting for the
            # device (a blocking host-to-device copy would synchronise the stream).
            image_of_gt = torch.repeat_interleave(
                torch.arange(num_images), torch.tensor(gt_counts, dtype=torch.long)
            )
            first_gt = torch.tensor([0] + gt_counts[:-1], dtype=torch.long).cumsum(0)
            anchor_offset = (image_of_gt * num_anchors).to(device, non_blocking=True)
            local_index = (torch.arange(num_gt) - first_gt[image_of_gt]).to(
                device, non_blocking=True
            )
            # Distances set to +inf before the top-k, as (rows (B, A) bool, row of each GT
            # (G,)). Ignored anchors (one row for all GTs) can still fill a level that has too
            # few others, as in the references; anchors not valid for a GT's image (one row per
            # image) only fill such a level at the end of its candidates, and are then dropped
            # from them (``short_images``).
            blocked = None
            short_images: Dict[Tuple[int, int], Tensor] = {}
            if ignored is not None:
                blocked = (ignored[None], torch.zeros(num_gt, dtype=torch.long, device=device))
            if valid is not None:
                assert ignored is None, "valid anchors and ignore boxes do not go together"
                short_images = self._short_images(valid, level_sizes, gt_counts)
                blocked = (~valid_here, image_of_gt.to(device, non_blocking=True))

            anchor_ctr = _centers(anchors)  # (A, 2)
            anchor_area = _areas(anchors, self.plus_one)  # (A,)
            grids = self._level_grids(anchor_ctr, level_sizes, min(num_gt, self.gt_chunk_size))
            # Best (priority-adjusted) IoU of each (image, anchor) over the GTs it is positive
            # for so far.
            best = anchors.new_full((num_images * num_anchors,), float("-inf"))
            for start in range(0, num_gt, self.gt_chunk_size):
                chunk = gt[start : start + self.gt_chunk_size]  # (Gc, 4)
                stop = start + len(chunk)
                chunk_blocked = None if blocked is None else (blocked[0], blocked[1][start:stop])
                # Columns of the chunk whose image has fewer valid anchors than candidates.
                short = [
                    (max(lo, start) - start, min(hi, stop) - start, keep)
                    for (lo, hi), keep in short_images.items()
                    if lo < stop and hi > start
                ]
                cand, cand_iou, positive, thr = self._select(
                    chunk,
                    anchors,
                    anchor_ctr,
                    anchor_area,
                    level_sizes,
                    grids,
                    chunk_blocked,
                    short,
                )
                thresholds[start:stop] = thr
                score = cand_iou
                if self.force_one_positive:
                    score = cand_iou.clone()
                    orphan = ~positive.any(dim=0)  # (Gc,)
                    best_iou, best_idx = cand_iou.max(dim=0)
                    orphan &= best_iou > 0
                    cols = orphan.nonzero().squeeze(1)
                    positive[best_idx[cols], cols] = True
                    # forced pairs take precedence over ordinary ones (IoU <= 1 < 1 + IoU)
                    score[best_idx[cols], cols] += 1.0
                self._update_best(
                    matches,
                    best,
                    cand + anchor_offset[start:stop],
                    score,
                    positive,
                    local_index[start:stop],
                )
        matches = matches.view(num_images, num_anchors)
        if ignored is not None:
            matches[(matches < 0) & ignored] = self.IGNORE
        if valid_here is not None:
            matches = torch.where(valid_here, matches, self.IGNORE)
        return matches, thresholds

    def _short_images(
        self, valid: Tensor, level_sizes: List[int], gt_counts: List[int]
    ) -> Dict[Tuple[int, int], Tensor]:
        """
        Images with GTs that have, on some level, fewer valid anchors than candidates per GT
        (``min(topk, A_l)``): their GTs get fewer candidates than the others.

        Returns:
            {(first GT, end GT) of the image: LongTensor of the positions, within each GT's
            candidate list (levels in order, nearest first), of its valid candidates}.
        """
        bounds = torch.tensor([0] + level_sizes).cumsum(0).tolist()
        counts = torch.stack(
            [valid[:, lo:hi].sum(dim=1) for lo, hi in zip(bounds[:-1], bounds[1:])], dim=1
        ).tolist()  # (N, L); a host copy (no wait when ``valid`` is on the CPU)
        result, first = {}, 0
        for image, num in enumerate(gt_counts):
            keep, pos, short = [], 0, False
            for size, num_valid in zip(level_sizes, counts[image]):
                if size == 0:
                    continue
                k = min(self.topk, size)
                # Invalid anchors are at +inf: a level's valid candidates come first.
                keep.extend(range(pos, pos + min(k, num_valid)))
                short |= num_valid < k
                pos += k
            if short and num > 0:
                result[(first, first + num)] = torch.tensor(keep, dtype=torch.long)
            first += num
        return result

    def _select(
        self, chunk, anchors, anchor_ctr, anchor_area, level_sizes, grids, blocked, short=()
    ):
        """
        Candidates of a chunk of GTs and their positive mask. Written to launch few ops: on a
        GPU each one costs more than its arithmetic for typical GT counts.

        Args:
            blocked: None, or (rows (B, A) bool, row of each GT of the chunk (Gc,)): anchors
                whose distance to that GT is taken as +inf.
            short: (first column, end column, positions of the valid candidates) for GTs some
                of whose candidates are not valid anchors of their image.

        Returns:
            cand: LongTensor (C, Gc) anchor indices; cand_iou: (C, Gc), 0 for candidates that
            are not valid; positive: bool (C, Gc); thresholds: (Gc,).
        """
        gt_ctr = _centers(chunk)  # (Gc, 2)
        starts = [0]
        for size in level_sizes:
            starts.append(starts[-1] + size)
        # One distance matrix over the span of the levels searched in full (same elements as
        # one matrix per level, so the same topk answers).
        full = [i for i, (n, g) in enumerate(zip(level_sizes, grids)) if n > 0 and g is None]
        if full:
            lo, hi = starts[full[0]], starts[full[-1] + 1]
            dist = _distances(anchor_ctr[lo:hi], gt_ctr)  # (A_span, Gc)
            if blocked is not None:
                dist.masked_fill_(_blocked_mask(blocked, lo, hi), float("inf"))
        candidates = []
        for level, (size, grid) in enumerate(zip(level_sizes, grids)):
            if size == 0:
                continue
            start, k = starts[level], min(self.topk, size)
            if grid is None:
                rows = dist[start - lo : start - lo + size]  # (A_l, Gc)
                idx = rows.topk(k, dim=0, largest=False).indices
            else:
                ctr = anchor_ctr[start : start + size]
                blk = None
                if blocked is not None:
                    blk = (blocked[0][:, start : start + size], blocked[1])
                idx = self._nearest_windowed(ctr, gt_ctr, k, blk, grid)
            candidates.append(idx + start)
        cand = torch.cat(candidates, dim=0)  # (C, Gc)
        # candidate_ious(anchors[cand], chunk), with the anchor areas computed once per image.
        boxes = anchors[cand]  # (C, Gc, 4)
        gt_area = _areas(chunk, self.plus_one)  # (Gc,)
        wh = torch.min(boxes[..., 2:], chunk[:, 2:]) - torch.max(boxes[..., :2], chunk[:, :2])
        if self.plus_one:
            wh = wh + 1.0
        wh = wh.clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        cand_iou = overlap / (anchor_area[cand] + gt_area - overlap).clamp(min=_IOU_EPS)
        # Statistics per GT along a contiguous row: on the CPU each GT's C IoUs are reduced in
        # the same order wherever it sits in the chunk (a reduction over dim 0 rounds the last
        # bit differently by column position), so thresholds do not depend on which other GTs,
        # or images, share the chunk. CUDA's reduction kernels pick their strategy by shape,
        # so there the last bit may still vary with the chunk's size.
        rows = cand_iou.t().contiguous()  # (Gc, C)
        mean = rows.mean(dim=1)
        # Bessel-corrected std; a single candidate (one anchor in the whole image) has no
        # spread, so its std is taken as 0 rather than NaN.
        std = rows.std(dim=1) if cand.shape[0] > 1 else torch.zeros_like(mean)
        cand_valid = None
        for lo_col, hi_col, keep in short:
            # The statistics of these GTs' valid candidates alone, row by row as above.
            keep = keep.to(rows.device)
            sub = rows[lo_col:hi_col, keep]  # (g, C_i)
            mean[lo_col:hi_col] = sub.mean(dim=1)
            std[lo_col:hi_col] = sub.std(dim=1) if sub.shape[1] > 1 else 0.0
            if cand_valid is None:
                cand_valid = torch.ones_like(cand_iou, dtype=torch.bool)
            cand_valid[:, lo_col:hi_col] = False
            cand_valid[keep, lo_col:hi_col] = True
        thr = mean + std
        positive = cand_iou >= thr[None, :]
        # Candidate centres strictly inside the GT: min(l, t, r, b) > eps.
        ctr = anchor_ctr[cand]  # (C, Gc, 2)
        ltrb = torch.cat([ctr - chunk[:, :2], chunk[:, 2:] - ctr], dim=-1)  # (C, Gc, 4)
        inside = ltrb.amin(dim=-1) > _INSIDE_EPS
        positive &= inside
        if cand_valid is not None:
            positive &= cand_valid
            cand_iou = torch.where(cand_valid, cand_iou, 0.0)
        return cand, cand_iou, positive, thr

    def _level_grids(
        self, anchor_ctr: Tensor, level_sizes: List[int], gts_per_chunk: int
    ) -> List[Optional[tuple]]:
        """Per level, the regular grid its anchor centres lie on (see :func:`_regular_grid`),
        or None where the windowed search does not apply or would not pay."""
        grids, start = [], 0
        window = (2 * self._window_radius() + 1) ** 2
        min_pairs = _MIN_PAIRS_FOR_WINDOW.get(anchor_ctr.device.type, 1 << 18)
        for size in level_sizes:
            ctr = anchor_ctr[start : start + size]
            start += size
            useful = size >= _MIN_WINDOWS_PER_LEVEL * window and size * gts_per_chunk >= min_pairs
            grids.append(_regular_grid(ctr) if useful else None)
        return grids

    def _window_radius(self) -> int:
        """Half-width r of the (2r+1) x (2r+1) window that holds a point's ``topk`` nearest grid
        points wherever it lies inside the grid: the (2m+1)^2 >= topk points around its nearest
        grid point are within (m + 1/2) * sqrt(2) strides, anything outside the window is at
        least r + 1/2 strides away (r = 2 for topk = 9)."""
        m = math.ceil((math.sqrt(self.topk) - 1) / 2)
        return math.floor((m + 0.5) * math.sqrt(2) - 0.5) + 1

    def _nearest_windowed(
        self, ctr: Tensor, gt_ctr: Tensor, k: int, blocked: Optional[tuple], grid: tuple
    ) -> Tensor:
        """
        Like :func:`_nearest_full`, from the distances in a window of the grid around each GT
        centre; GTs whose window answer is not certain fall back to :func:`_nearest_full`.

        Args:
            ctr: (A_l, 2) anchor centres of the level, on ``grid``; gt_ctr: (Gc, 2);
            blocked: None or (rows (B, A_l) bool, row of each GT (Gc,)), as in ``_select``.

        Returns:
            LongTensor (k, Gc): anchor indices within the level, nearest first.
        """
        x0, y0, sx, sy, width, height, deviation = grid
        r = self._window_radius()
        nx, ny = min(2 * r + 1, width), min(2 * r + 1, height)
        if nx * ny <= k:  # a grid one or two cells thin: the window cannot prove anything
            return _nearest_full(ctr, gt_ctr, k, blocked)
        num_gt = gt_ctr.shape[0]
        ctr64 = gt_ctr.double()
        # Window origin: r cells before the nearest grid point, moved inside the grid.
        gx = torch.nan_to_num((ctr64[:, 0] - x0) / sx).round().clamp(0, width - 1).long()
        gy = torch.nan_to_num((ctr64[:, 1] - y0) / sy).round().clamp(0, height - 1).long()
        lox = (gx - r).clamp(min=0, max=width - nx)  # (Gc,)
        loy = (gy - r).clamp(min=0, max=height - ny)
        cols = lox[:, None] + torch.arange(nx, device=ctr.device)  # (Gc, nx)
        rows = loy[:, None] + torch.arange(ny, device=ctr.device)  # (Gc, ny)
        window = (rows[:, :, None] * width + cols[:, None, :]).reshape(num_gt, ny * nx)
        # Same formula as the full matrix, element for element.
        dist = (ctr[window] - gt_ctr[:, None, :]).pow(2).sum(-1).sqrt()  # (Gc, n)
        if blocked is not None:
            rows_l, gt_rows = blocked
            if rows_l.shape[0] == 1:
                dist[rows_l[0][window]] = float("inf")
            else:
                dist[rows_l[gt_rows[:, None], window]] = float("inf")
        kk = min(k + 1, window.shape[1])
        values, pos = dist.topk(kk, dim=1, largest=False)  # (Gc, kk), ascending
        kth = values[:, k - 1]
        certain = torch.isfinite(kth)
        if kk > 1:
            certain &= (values[:, 1:] > values[:, :-1]).all(dim=1)
        # Lower bound on the distance of anchors outside the window: the gap, along x or y, to
        # the nearest grid line beyond the window on each side that has anchors.
        inf = torch.full_like(ctr64[:, 0], float("inf"))
        fx, fy = lox.double(), loy.double()
        gaps = (
            torch.where(lox > 0, ctr64[:, 0] - (x0 + (fx - 1) * sx), inf),
            torch.where(lox + nx < width, (x0 + (fx + nx) * sx) - ctr64[:, 0], inf),
            torch.where(loy > 0, ctr64[:, 1] - (y0 + (fy - 1) * sy), inf),
            torch.where(loy + ny < height, (y0 + (fy + ny) * sy) - ctr64[:, 1], inf),
        )
        bound = torch.stack(gaps, dim=1).min(dim=1).values  # (Gc,)
        # Margin for the anchors' distance from the ideal grid and float32 rounding.
        margin = 2 * deviation + 1e-3 * min(sx, sy) + 1e-5 * kth.double().abs()
        certain &= kth.double() < bound - margin
        idx = window.gather(1, pos[:, :k]).t().contiguous()  # (k, Gc)
        uncertain = (~certain).nonzero().squeeze(1)
        if uncertain.numel() > 0:
            sub = None if blocked is None else (blocked[0], blocked[1][uncertain])
            idx[:, uncertain] = _nearest_full(ctr, gt_ctr[uncertain], k, sub)
        return idx

    @staticmethod
    def _update_best(matches, best, cand, score, positive, gt_index):
        """
        Assign each positive (image, anchor) of this chunk to its best GT, keeping earlier
        chunks' assignments on exact ties (they have lower GT indices). Dense over the (C, Gc)
        pairs, without boolean indexing, so that no step waits for the GPU.

        Args:
            matches, best: (N * A,) flat over images; cand: LongTensor (C, Gc) of indices into
            them; score, positive: (C, Gc); gt_index: (Gc,) each GT's index within its image.
        """
        flat_idx = cand.reshape(-1)  # (C * Gc,)
        flat_pos = positive.reshape(-1)
        values = torch.where(flat_pos, score.reshape(-1), float("-inf"))
        chunk_best = torch.full_like(best, float("-inf"))
        chunk_best.scatter_reduce_(0, flat_idx, values, reduce="amax")
        never = torch.iinfo(torch.long).max
        winner = flat_pos & (values == chunk_best[flat_idx])
        winner_gt = torch.where(winner, gt_index.expand_as(cand).reshape(-1), never)
        chunk_gt = torch.full_like(matches, never)
        chunk_gt.scatter_reduce_(0, flat_idx, winner_gt, reduce="amin")
        improved = chunk_best > best
        matches.copy_(torch.where(improved, chunk_gt, matches))
        best.copy_(torch.where(improved, chunk_best, best))

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


def _areas(boxes: Tensor, plus_one: bool = False) -> Tensor:
    """(N, 4) XYXY -> (N,) (x2 - x1) * (y2 - y1) (``+ 1`` on each side with ``plus_one``): one
    product, so the same value as :func:`candidate_ious` computes."""
    wh = boxes[:, 2:] - boxes[:, :2]
    if plus_one:
        wh = wh + 1.0
    return wh[:, 0] * wh[:, 1]


def _distances(ctr: Tensor, gt_ctr: Tensor) -> Tensor:
    """(A, 2) x (Gc, 2) -> (A, Gc) centre distances, with the references' formula so that
    distance ties break identically."""
    return (ctr[:, None, :] - gt_ctr[None, :, :]).pow(2).sum(-1).sqrt()


def _blocked_mask(blocked: tuple, lo: int, hi: int) -> Tensor:
    """Bool (hi - lo, Gc), or (hi - lo, 1) when one row is shared by every GT: the anchors
    lo..hi-1 blocked for each GT, from ``blocked`` = (rows (B, A) bool, row of each GT (Gc,))."""
    rows, gt_rows = blocked
    if rows.shape[0] == 1:
        return rows[0, lo:hi, None]
    return rows[:, lo:hi][gt_rows].t()


def _nearest_full(ctr: Tensor, gt_ctr: Tensor, k: int, blocked: Optional[tuple]) -> Tensor:
    """
    The ``k`` anchors of a level whose centres are closest to each GT centre, from the full
    distance matrix, as both references compute it.

    Args:
        ctr: (A_l, 2) anchor centres; gt_ctr: (Gc, 2); blocked: None, or (rows (B, A_l) bool,
            row of each GT (Gc,)): anchors at +inf for that GT (so never candidates unless
            fewer than ``k`` others exist).

    Returns:
        LongTensor (k, Gc): anchor indices within the level, nearest first.
    """
    dist = _distances(ctr, gt_ctr)  # (A_l, Gc)
    if blocked is not None:
        dist.masked_fill_(_blocked_mask(blocked, 0, len(ctr)), float("inf"))
    return dist.topk(k, dim=0, largest=False).indices  # (k, Gc)


def _regular_grid(ctr: Tensor) -> Optional[Tuple[float, float, float, float, int, int, float]]:
    """
    If the centres (A_l, 2) lie, in row-major order (x fastest), on a regular grid
    ``(x0 + i * sx, y0 + j * sy)`` up to 1% of a stride, returns
    ``(x0, y0, sx, sy, width, height, max_deviation)``; otherwise None.
    """
    n = ctr.shape[0]
    if n < 2 or not ctr.dtype.is_floating_point:
        return None
    c = ctr.double()
    # Row width = index of the first centre on another row; one device-to-host copy.
    new_row = c[:, 1] != c[0, 1]
    width_t = torch.where(new_row.any(), new_row.int().argmax(), n)
    probe = torch.stack(
        [width_t.double(), c[0, 0], c[0, 1], c[1, 0], c[width_t.clamp(max=n - 1), 1]]
    )
    width_f, x0, y0, x1, y1 = probe.tolist()
    width = int(width_f)
    if width == 0 or n % width:
        return None
    height = n // width
    sx = x1 - x0 if width > 1 else 1.0
    sy = y1 - y0 if height > 1 else 1.0
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        return None
    i = torch.arange(n, device=ctr.device, dtype=torch.float64)
    ideal = torch.stack(
        [x0 + (i % width) * sx, y0 + torch.div(i, width, rounding_mode="floor") * sy], dim=1
    )
    deviation = float((c - ideal).abs().max())
    if not deviation <= 0.01 * min(sx, sy):  # also rejects NaN
        return None
    return x0, y0, sx, sy, width, height, deviation


def _as_tensor(boxes) -> Tensor:
    return boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes).reshape(-1, 4)
