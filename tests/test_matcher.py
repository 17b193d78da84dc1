"""
ATSSMatcher against the rules of the paper (Zhang et al., CVPR 2020, arXiv 1912.02424, Sec. 3.1)
and of mmdetection's mmdet/models/task_modules/assigners/atss_assigner.py.

Expected values come from hand-placed boxes, a pure-Python IoU and ``statistics.stdev``
(Bessel-corrected), or from an exhaustive reference written here (full anchors x GTs IoU and
distance matrices), never from the matcher's own output.
"""

import math
import random
import statistics
from typing import List

import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes

from atss_d2.modeling import ATSSMatcher

BG = -1
IGNORE = -2


def iou(a, b) -> float:
    """IoU of two XYXY boxes, plain Python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def square(cx, cy, size):
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def boxes(rows) -> Boxes:
    return Boxes(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4))


def mean_plus_std(values: List[float]) -> float:
    return statistics.mean(values) + statistics.stdev(values)


# ------------------------------------------------------------------------------------------
# Hand-made cases
# ------------------------------------------------------------------------------------------
GT = [0.0, 0.0, 10.0, 10.0]  # centre (5, 5)
# Level 0: 4x4 anchors. Distances to the GT centre: 0, 2, 4, 10, 4.5.
LEVEL0 = [square(5, 5, 4), square(3, 5, 4), square(9, 5, 4), square(15, 5, 4), square(5, 0.5, 4)]


def test_threshold_uses_topk_per_level_and_bessel_std():
    # Level 1: 10x10 anchors at distances 0, 1, 4.7, 21.2 from the GT centre.
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 9.7, 10), square(20, 20, 10)]
    # topk=3 per level: level 0 -> anchors 0, 1, 2; level 1 -> anchors 0, 1, 2.
    # (A global top-6 would take level 0's anchor 4 at 4.5 instead of level 1's at 4.7.)
    cand = [LEVEL0[0], LEVEL0[1], LEVEL0[2], level1[0], level1[1], level1[2]]
    ious = [iou(a, GT) for a in cand]
    # 0.16, 0.16, 12/104, 1, 90/110, 0.3605
    assert ious[:4] == pytest.approx([0.16, 0.16, 12 / 104, 1.0])
    thr = mean_plus_std(ious)
    assert thr == pytest.approx(0.81647, abs=1e-4)

    result = ATSSMatcher(3).match([boxes(LEVEL0), boxes(level1)], boxes([GT]))
    assert result.thresholds.tolist() == pytest.approx([thr], abs=1e-5)
    # Positives: IoU >= thr and centre inside: level 1's anchors 0 (IoU 1) and 1 (IoU 0.818).
    expected = [BG] * 5 + [0, 0, BG, BG]
    assert result.matches.tolist() == expected
    assert result.matches.dtype == torch.long


def test_bessel_not_population_std():
    # Same level 0; level 1's third anchor at distance 3 (IoU 70/130).
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 8, 10), square(20, 20, 10)]
    cand = [LEVEL0[0], LEVEL0[1], LEVEL0[2], level1[0], level1[1], level1[2]]
    ious = [iou(a, GT) for a in cand]
    thr = mean_plus_std(ious)
    population = statistics.mean(ious) + statistics.pstdev(ious)
    # Anchor (6, 5) with IoU 90/110 = 0.818 is between the two thresholds: Bessel's n-1 makes it
    # negative, the population std would make it positive.
    assert population < 90 / 110 < thr
    result = ATSSMatcher(3).match([boxes(LEVEL0), boxes(level1)], boxes([GT]))
    assert result.thresholds.tolist() == pytest.approx([thr], abs=1e-5)
    assert result.matches.tolist() == [BG] * 5 + [0, BG, BG, BG]


def test_candidates_are_nearest_centres_not_highest_iou():
    # One level, topk=2. The two nearest centres are a (tiny, IoU 0.04) and d (IoU 0.81); the
    # huge anchor c overlaps the GT entirely but its centre is 25 px away, b is 1 px away.
    a = square(5, 5, 2)  # centre (5, 5), IoU 4/100
    b = square(6, 5, 8)  # centre (6, 5), IoU 64/100
    c = [-50.0, -50.0, 110.0, 60.0]  # centre (30, 5), IoU 100/17600
    d = [0.5, 0.5, 9.5, 9.5]  # centre (5, 5), IoU 81/100
    thr = mean_plus_std([iou(a, GT), iou(d, GT)])
    assert thr == pytest.approx(0.425 + 0.77 / math.sqrt(2))
    result = ATSSMatcher(2).match([boxes([a, b, c, d])], boxes([GT]))
    assert result.thresholds.tolist() == pytest.approx([thr], abs=1e-5)
    # thr = 0.97 > 0.81: nothing is positive.
    assert result.matches.tolist() == [BG] * 4
    # topk=3 adds b (the next nearest), never c (the one covering the GT).
    thr3 = mean_plus_std([0.04, 0.64, 0.81])
    assert ATSSMatcher(3).match([boxes([a, b, c, d])], boxes([GT])).thresholds.tolist() == (
        pytest.approx([thr3], abs=1e-5)
    )


def test_centre_must_be_inside_by_more_than_001():
    # Two 12x12 anchors with high IoU, centred 0.005 and 0.02 px inside the GT's right edge,
    # four 1x1 anchors in the GT's corners (IoU 0.01) keep the threshold low.
    near = [3.995, -1.0, 15.995, 11.0]  # centre (9.995, 5): r = 0.005
    inside = [3.98, -1.0, 15.98, 11.0]  # centre (9.98, 5): r = 0.02
    outside = [4.02, -1.0, 16.02, 11.0]  # centre (10.02, 5): outside
    corners = [square(0.5, 0.5, 1), square(9.5, 0.5, 1), square(0.5, 9.5, 1), square(9.5, 9.5, 1)]
    anchors = [near, inside, outside] + corners
    ious = [iou(x, GT) for x in anchors]
    thr = mean_plus_std(ious)
    assert min(ious[:3]) > thr  # all three pass the IoU test
    result = ATSSMatcher(9).match([boxes(anchors)], boxes([GT]))
    assert result.thresholds.tolist() == pytest.approx([thr], abs=1e-5)
    assert result.matches.tolist() == [BG, 0, BG, BG, BG, BG, BG]


# Shared by the tie-break tests: anchor a covers both GTs, c and d are far.
_A = [0.0, 0.0, 10.0, 10.0]
_C = [20.0, 0.0, 30.0, 10.0]
_D = [0.0, 20.0, 10.0, 30.0]
_G_LOW = [0.0, 0.0, 10.0, 12.0]  # IoU with a: 100/120
_G_HIGH = [0.0, 0.0, 10.0, 11.0]  # IoU with a: 100/110


def test_anchor_positive_for_two_gts_takes_highest_iou():
    for g in (_G_LOW, _G_HIGH):  # by hand: a is positive for both GTs on its own
        assert iou(_A, g) >= mean_plus_std([iou(_A, g), 0.0, 0.0])
    anchors = [boxes([_A, _C, _D])]
    for chunk in (1, 256):
        matcher = ATSSMatcher(3, gt_chunk_size=chunk)
        assert matcher(anchors, boxes([_G_LOW, _G_HIGH])).tolist() == [1, BG, BG]
        assert matcher(anchors, boxes([_G_HIGH, _G_LOW])).tolist() == [0, BG, BG]


def test_exact_tie_goes_to_lowest_gt_index():
    anchors = [boxes([_A, _C, _D])]
    gts = boxes([_G_LOW, _G_HIGH, _G_HIGH, _G_HIGH])
    for chunk in (1, 2, 3, 256):
        assert ATSSMatcher(3, gt_chunk_size=chunk)(anchors, gts).tolist() == [1, BG, BG]


def test_topk_larger_than_level():
    # topk=9 on levels with 3, 2 and 1 anchors: every anchor is a candidate.
    level0 = [square(5, 5, 4), square(1, 1, 4), square(9, 9, 4)]
    level1 = [square(5, 5, 10), square(30, 30, 10)]
    level2 = [square(0, 0, 40)]
    all_anchors = level0 + level1 + level2
    thr = mean_plus_std([iou(a, GT) for a in all_anchors])
    result = ATSSMatcher(9).match([boxes(level0), boxes(level1), boxes(level2)], boxes([GT]))
    assert result.thresholds.tolist() == pytest.approx([thr], abs=1e-5)
    expected = [0 if iou(a, GT) >= thr else BG for a in all_anchors]
    assert expected == [BG, BG, BG, 0, BG, BG]
    assert result.matches.tolist() == expected


def test_no_gt():
    anchors = [boxes(LEVEL0), boxes([square(5, 5, 10)])]
    result = ATSSMatcher(9).match(anchors, Boxes(torch.zeros(0, 4)))
    assert result.matches.tolist() == [BG] * 6
    assert result.thresholds.shape == (0,)


def test_no_anchors():
    gts = boxes([GT, [3.0, 3.0, 8.0, 9.0]])
    assert ATSSMatcher(9)([], gts).shape == (0,)
    empty = Boxes(torch.zeros(0, 4))
    result = ATSSMatcher(9).match([empty, empty], gts)
    assert result.matches.shape == (0,)
    assert torch.isfinite(result.thresholds).all()
    # An empty level between non-empty ones changes nothing.
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 8, 10), square(20, 20, 10)]
    with_empty = ATSSMatcher(3).match([boxes(LEVEL0), empty, boxes(level1), empty], boxes([GT]))
    without = ATSSMatcher(3).match([boxes(LEVEL0), boxes(level1)], boxes([GT]))
    assert with_empty.matches.tolist() == without.matches.tolist() == [BG] * 5 + [0, BG, BG, BG]
    assert torch.equal(with_empty.thresholds, without.thresholds)


def test_zero_area_gt_gets_nothing_and_changes_nothing():
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 8, 10), square(20, 20, 10)]
    anchors = [boxes(LEVEL0), boxes(level1)]
    for force in (False, True):
        matcher = ATSSMatcher(3, force_one_positive=force)
        alone = matcher.match(anchors, boxes([[5.0, 5.0, 5.0, 5.0]]))
        assert alone.matches.tolist() == [BG] * 9
        assert torch.isfinite(alone.thresholds).all()
        # Next to a normal GT (index 1), the result for that GT is unchanged.
        both = matcher.match(anchors, boxes([[5.0, 5.0, 5.0, 5.0], GT]))
        assert both.matches.tolist() == [BG] * 5 + [1, BG, BG, BG]
        assert torch.isfinite(both.thresholds).all()


def test_ignore_boxes_iof():
    # One level of 4x4 anchors; the ignore box covers 3/4 of anchor 1 (IoF 0.75, ignored) and
    # half of anchor 4 (IoF exactly 0.5: not above the threshold, kept).
    anchors = [square(5, 5, 4), square(3, 5, 4), square(9, 5, 4), square(5, 1, 4), square(1, 1, 4)]
    ignore = [-1.0, 1.0, 4.0, 8.0]
    gt = [0.0, 0.0, 8.4, 10.0]  # centre (4.2, 5): distances 0.8, 1.2, 4.8, 4.08, 5.12
    # Without ignore, topk=3 takes anchors 0, 1, 3: IoUs 16/84, 16/84, 12/88.
    plain = ATSSMatcher(3).match([boxes(anchors)], boxes([gt]))
    thr_plain = mean_plus_std([16 / 84, 16 / 84, 12 / 88])
    assert plain.thresholds.tolist() == pytest.approx([thr_plain], abs=1e-5)
    assert thr_plain > 16 / 84  # no positive
    assert plain.matches.tolist() == [BG] * 5
    # With it, anchor 1 is never a candidate: anchors 0, 3, 2 (IoU 5.6/94.4).
    thr_ign = mean_plus_std([16 / 84, 12 / 88, 5.6 / 94.4])
    assert thr_ign > 16 / 84
    result = ATSSMatcher(3).match([boxes(anchors)], boxes([gt]), ignore_boxes=boxes([ignore]))
    assert result.thresholds.tolist() == pytest.approx([thr_ign], abs=1e-5)
    assert result.matches.tolist() == [BG, IGNORE, BG, BG, BG]
    # No GT: ignored anchors are still marked.
    nogt = ATSSMatcher(3)([boxes(anchors)], Boxes(torch.zeros(0, 4)), ignore_boxes=boxes([ignore]))
    assert nogt.tolist() == [BG, IGNORE, BG, BG, BG]
    # A lower threshold ignores anchor 4 too (IoF 0.5 > 0.4).
    low = ATSSMatcher(3, ignore_iof_thresh=0.4)
    assert low(
        [boxes(anchors)], Boxes(torch.zeros(0, 4)), ignore_boxes=boxes([ignore])
    ).tolist() == [BG, IGNORE, BG, BG, IGNORE]


def test_force_one_positive():
    # Anchors 8x8 centred on a stride-8 grid; the GT (5 x 5.5 px) holds no anchor centre
    # strictly inside, so ATSS gives it no positive.
    centres = [(8 * i, 8 * j) for j in range(5) for i in range(5)]
    anchors = [square(x, y, 8) for x, y in centres]
    gt = [9.0, 1.0, 14.0, 6.5]
    plain = ATSSMatcher(9)([boxes(anchors)], boxes([gt]))
    assert plain.tolist() == [BG] * 25
    # By hand: the best candidate is the anchor centred (8, 0) = [4,-4,12,4]: overlap 3 x 3 = 9,
    # union 64 + 27.5 - 9 -> IoU 0.109 (next: (8, 8) 7.5/84 = 0.089).
    best = centres.index((8, 0))
    assert iou(anchors[best], gt) == pytest.approx(9 / 82.5)
    assert max(iou(a, gt) for i, a in enumerate(anchors) if i != best) == pytest.approx(7.5 / 84)
    forced = ATSSMatcher(9, force_one_positive=True)([boxes(anchors)], boxes([gt]))
    expected = [BG] * 25
    expected[best] = 0
    assert forced.tolist() == expected
    # A GT that already has positives is unaffected by the option.
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 8, 10), square(20, 20, 10)]
    for force in (False, True):
        m = ATSSMatcher(3, force_one_positive=force)([boxes(LEVEL0), boxes(level1)], boxes([GT]))
        assert m.tolist() == [BG] * 5 + [0, BG, BG, BG]


def test_force_one_positive_thin_gt():
    # The failure reported on the original repository (issue 90): a long thin GT (100 x 4) whose
    # mean + std threshold is above the IoU of every candidate whose centre lies inside it.
    # Level 0: 8 px anchors, stride 8 (centres at y = 8, 16: outside the GT's 10..14);
    # level 1: 64 px anchors, stride 12 (centres at y = 12: inside).
    gen = DefaultAnchorGenerator(
        sizes=[[8], [64]], aspect_ratios=[[1.0]], strides=[8, 12], offset=0.0
    )
    anchors = gen([torch.zeros(1, 1, 6, 15), torch.zeros(1, 1, 4, 10)])
    gt = [0.0, 10.0, 100.0, 14.0]  # centre (50, 12)
    # Level 1's anchors fully spanning the GT's height: overlap 64 x 4, IoU 256 / 4240.
    # Level 0's best: 8 x 2 px overlap, IoU 16 / 448. The threshold lies between the two
    # groups' mixture mean and the top: compute it by hand from the 18 candidates.
    all_anchors = torch.cat([a.tensor for a in anchors]).tolist()
    ious = [iou(a, gt) for a in all_anchors]
    assert max(ious) == pytest.approx(256 / 4240)
    plain = ATSSMatcher(9).match(anchors, boxes([gt]))
    cand = []
    start = 0
    for level in anchors:
        centres = level.get_centers().tolist()
        d = [math.hypot(x - 50.0, y - 12.0) for x, y in centres]
        order = sorted(range(len(d)), key=d.__getitem__)
        # anchors tied with the 9th nearest have its IoU, so the threshold does not depend on
        # which of them is taken
        tied = [i for i in order if d[i] == d[order[8]]]
        assert len({ious[start + i] for i in tied}) == 1
        cand += [start + i for i in order[:9]]
        start += len(level)
    thr = mean_plus_std([ious[i] for i in cand])
    assert plain.thresholds.tolist() == pytest.approx([thr], abs=1e-6)
    assert thr > max(ious)  # nobody can be positive
    assert (plain.matches == BG).all()
    forced = ATSSMatcher(9, force_one_positive=True)(anchors, boxes([gt]))
    (pos,) = torch.nonzero(forced >= 0).flatten().tolist()  # exactly one positive
    assert forced[pos] == 0
    assert pos in cand and ious[pos] == pytest.approx(256 / 4240)


def test_chunking_does_not_change_result():
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64], [128]], aspect_ratios=[[1.0]], strides=[8, 16, 32], offset=0.5
    )
    feats = [torch.zeros(1, 1, 12, 16), torch.zeros(1, 1, 6, 8), torch.zeros(1, 1, 3, 4)]
    anchors = gen(feats)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        n = int(torch.randint(1, 40, (1,), generator=g))
        gts = random_gt(n, 96.0, 128.0, g)
        one = ATSSMatcher(9, gt_chunk_size=1).match(anchors, gts)
        big = ATSSMatcher(9, gt_chunk_size=1000).match(anchors, gts)
        assert torch.equal(one.matches, big.matches)
        assert torch.allclose(one.thresholds, big.thresholds, atol=1e-6)
        forced1 = ATSSMatcher(9, gt_chunk_size=1, force_one_positive=True)(anchors, gts)
        forced2 = ATSSMatcher(9, gt_chunk_size=1000, force_one_positive=True)(anchors, gts)
        assert torch.equal(forced1, forced2)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ATSSMatcher(0)
    with pytest.raises(ValueError):
        ATSSMatcher(9, gt_chunk_size=0)


# ------------------------------------------------------------------------------------------
# Exhaustive reference
# ------------------------------------------------------------------------------------------
def random_gt(n: int, height: float, width: float, g: torch.Generator) -> Boxes:
    """n random boxes with continuous coordinates (no distance ties), 1..~width px wide."""
    if n == 0:
        return Boxes(torch.zeros(0, 4))
    cx = torch.rand(n, generator=g) * width
    cy = torch.rand(n, generator=g) * height
    # log-uniform sizes from 1 px to the image size, random aspect ratios
    w = torch.exp(torch.rand(n, generator=g) * math.log(width))
    h = torch.exp(torch.rand(n, generator=g) * math.log(height))
    x1 = (cx - w / 2).clamp(min=0)
    y1 = (cy - h / 2).clamp(min=0)
    x2 = (cx + w / 2).clamp(max=width)
    y2 = (cy + h / 2).clamp(max=height)
    return Boxes(torch.stack([x1, y1, x2, y2], dim=1))


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) -> (N, M) intersection areas."""
    iw = torch.min(a[:, None, 2], b[None, :, 2]) - torch.max(a[:, None, 0], b[None, :, 0])
    ih = torch.min(a[:, None, 3], b[None, :, 3]) - torch.max(a[:, None, 1], b[None, :, 1])
    return iw.clamp(min=0) * ih.clamp(min=0)


def reference_assign(
    anchors_per_level: List[Boxes], gt: Boxes, topk: int, ignore=None, iof_thresh=0.5
) -> torch.Tensor:
    """
    The paper's algorithm with full anchors x GTs matrices (as mmdetection computes it).
    With ``ignore`` (Boxes): anchors covered by an ignore box over more than ``iof_thresh`` of
    their area are never candidates and are labelled -2 unless positive.
    """
    levels = [a.tensor for a in anchors_per_level]
    anchors = torch.cat(levels)
    gtt = gt.tensor
    num_a, num_g = len(anchors), len(gtt)
    ignored = torch.zeros(num_a, dtype=torch.bool)
    if ignore is not None and len(ignore) > 0:
        area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        iof = _intersection(anchors, ignore.tensor) / area[:, None]  # (A, I)
        ignored = (iof > iof_thresh).any(dim=1)
    if num_g == 0 or num_a == 0:
        return torch.where(ignored, torch.tensor(-2), torch.tensor(-1))
    # IoU matrix (A, G)
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    area_g = (gtt[:, 2] - gtt[:, 0]) * (gtt[:, 3] - gtt[:, 1])
    inter = _intersection(anchors, gtt)
    ious = inter / (area_a[:, None] + area_g[None, :] - inter)
    # Distance matrix (A, G) between centres
    acx, acy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    gcx, gcy = (gtt[:, 0] + gtt[:, 2]) / 2, (gtt[:, 1] + gtt[:, 3]) / 2
    dist = torch.sqrt((acx[:, None] - gcx[None]) ** 2 + (acy[:, None] - gcy[None]) ** 2)
    dist[ignored] = math.inf

    # Candidates: per level, the topk nearest centres of each GT (columns).
    is_cand = torch.zeros(num_a, num_g, dtype=torch.bool)
    start = 0
    for lv in levels:
        order = torch.argsort(dist[start : start + len(lv)], dim=0, stable=True)  # (A_l, G)
        is_cand[start + order[:topk], torch.arange(num_g)[None, :]] = True
        start += len(lv)
    n = is_cand.sum(dim=0).double()  # (G,)
    iou64 = ious.double()
    mean = (iou64 * is_cand).sum(dim=0) / n
    var = (((iou64 - mean) ** 2) * is_cand).sum(dim=0) / (n - 1).clamp(min=1)  # Bessel
    thr = (mean + var.sqrt()).float()
    left, top = acx[:, None] - gtt[None, :, 0], acy[:, None] - gtt[None, :, 1]
    right, bottom = gtt[None, :, 2] - acx[:, None], gtt[None, :, 3] - acy[:, None]
    inside = torch.stack([left, top, right, bottom]).min(dim=0).values > 0.01
    positive = is_cand & (ious >= thr[None, :]) & inside
    positive_iou = torch.where(positive, ious, torch.tensor(-math.inf))
    best = positive_iou.max(dim=1).values
    # highest IoU; on an exact tie the first (lowest) GT index, as argmax documents
    first_best = (positive_iou == best[:, None]).int().argmax(dim=1)
    background = torch.where(ignored, torch.tensor(-2), torch.tensor(-1))
    return torch.where(best > -math.inf, first_best, background)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_matches_exhaustive_reference(offset):
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64], [128], [256], [512]],
        aspect_ratios=[[1.0]],
        strides=[4, 8, 16, 32, 64],
        offset=offset,
    )
    rng = random.Random(1234 + int(offset * 10))
    g = torch.Generator().manual_seed(4321 + int(offset * 10))
    matcher = ATSSMatcher(9)
    total_pos = 0
    for _ in range(100):
        # up to 40 x 40 anchors on the finest level, small images included
        h, w = rng.randint(8, 160), rng.randint(8, 160)
        shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32, 64)]
        anchors = gen([torch.zeros(1, 1, hh, ww) for hh, ww in shapes])
        gts = random_gt(rng.randint(0, 30), float(h), float(w), g)
        expected = reference_assign(anchors, gts, 9)
        got = matcher(anchors, gts)
        assert got.tolist() == expected.tolist(), (h, w, gts.tensor)
        total_pos += int((expected >= 0).sum())
    assert total_pos > 500  # the cases exercise positives, not just background


def test_ignore_boxes_match_exhaustive_reference():
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64], [128], [256], [512]],
        aspect_ratios=[[1.0]],
        strides=[4, 8, 16, 32, 64],
        offset=0.0,
    )
    rng = random.Random(99)
    g = torch.Generator().manual_seed(99)
    matcher = ATSSMatcher(9)
    total_ignored = 0
    for _ in range(40):
        # at least 16 x 16 anchors on the finest level and small ignore boxes, so that every
        # level keeps 9 non-ignored anchors (no ambiguity among ignored ones at infinity)
        h, w = rng.randint(64, 160), rng.randint(64, 160)
        shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32, 64)]
        anchors = gen([torch.zeros(1, 1, hh, ww) for hh, ww in shapes])
        gts = random_gt(rng.randint(0, 20), float(h), float(w), g)
        ig = torch.rand(rng.randint(1, 3), 4, generator=g)
        xy = ig[:, :2] * torch.tensor([w - 40.0, h - 40.0])
        ignore = Boxes(torch.cat([xy, xy + 10 + ig[:, 2:] * 30], dim=1))
        expected = reference_assign(anchors, gts, 9, ignore=ignore)
        got = matcher(anchors, gts, ignore_boxes=ignore)
        assert got.tolist() == expected.tolist(), (h, w, gts.tensor, ignore.tensor)
        total_ignored += int((expected == IGNORE).sum())
    assert total_ignored > 50


def test_many_gts_match_exhaustive_reference():
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64], [128]], aspect_ratios=[[1.0]], strides=[4, 8, 16], offset=0.5
    )
    anchors = gen([torch.zeros(1, 1, 32, 40), torch.zeros(1, 1, 16, 20), torch.zeros(1, 1, 8, 10)])
    gts = random_gt(1500, 128.0, 160.0, torch.Generator().manual_seed(7))
    expected = reference_assign(anchors, gts, 9)
    for chunk in (256, 1000):
        assert ATSSMatcher(9, gt_chunk_size=chunk)(anchors, gts).tolist() == expected.tolist()


def test_reference_is_sane():
    """The reference itself on the first hand case (so the comparison above means something)."""
    level1 = [square(5, 5, 10), square(6, 5, 10), square(5, 9.7, 10), square(20, 20, 10)]
    ref = reference_assign([boxes(LEVEL0), boxes(level1)], boxes([GT]), 3)
    assert ref.tolist() == [BG] * 5 + [0, 0, BG, BG]


def test_pure_function():
    # Spec: the matcher is a pure function; same inputs twice -> same outputs, inputs untouched.
    anchors = [boxes(LEVEL0)]
    before = anchors[0].tensor.clone()
    m = ATSSMatcher(3)
    out1 = m(anchors, boxes([GT]))
    out2 = m(anchors, boxes([GT]))
    assert torch.equal(out1, out2) and torch.equal(anchors[0].tensor, before)
