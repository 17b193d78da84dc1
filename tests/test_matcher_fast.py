"""
The windowed candidate search of ATSSMatcher (distances only near each GT centre) must give
exactly the assignments and thresholds of the exhaustive computation (full anchors x GTs IoU
and distance matrices, topk over whole columns), including crowded images full of distance ties,
GT centres on or beyond the border, ignore regions and anchors that are not on a grid.
"""

import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes

import atss_d2.modeling.matcher as matcher_module
from atss_d2.modeling import ATSSMatcher

STRIDES = [8, 16, 32, 64, 128]


def atss_levels(height: int, width: int, offset: float = 0.0):
    """P3-P7 anchors (one 8*stride square per location) of a padded height x width image."""
    generator = DefaultAnchorGenerator(
        sizes=[[8 * s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES, offset=offset
    )
    sizes = [(-(-height // s), -(-width // s)) for s in STRIDES]
    return [b.tensor for b in generator([torch.empty(1, 1, h, w) for h, w in sizes])]


def exhaustive(levels, gt, topk=9, ignored=None):
    """ATSS from the full (A, G) matrices, written from the paper's rules."""
    anchors = torch.cat(levels)
    num_anchors, num_gt = len(anchors), len(gt)
    matches = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        if ignored is not None:
            matches[ignored] = -2
        return matches, anchors.new_zeros(0)
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    wh = (
        torch.min(anchors[:, None, 2:], gt[None, :, 2:])
        - torch.max(anchors[:, None, :2], gt[None, :, :2])
    ).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area_a[:, None] + area_g[None, :] - inter).clamp(min=1e-6)  # (A, G)
    actr = torch.stack(
        [(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2], 1
    )
    gctr = torch.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2], 1)
    dist = (actr[:, None, :] - gctr[None, :, :]).pow(2).sum(-1).sqrt()  # (A, G)
    if ignored is not None:
        dist[ignored] = float("inf")
    cand, start = [], 0
    for level in levels:
        n = len(level)
        cand.append(
            dist[start : start + n].topk(min(topk, n), dim=0, largest=False).indices + start
        )
        start += n
    cand = torch.cat(cand)  # (C, G)
    cand_iou = iou.gather(0, cand)
    # mean + std of each GT's own candidates (a 1-D reduction per GT: the last bit of a
    # reduction over dim 0 of the (C, G) matrix can depend on the column's position).
    thr = (
        torch.stack([c.mean() + (c.std() if len(c) > 1 else 0) for c in cand_iou.t().contiguous()])
        if num_gt
        else cand_iou.new_zeros(0)
    )
    cx, cy = actr[cand, 0], actr[cand, 1]
    inside = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy]).amin(0)
    positive = (cand_iou >= thr) & (inside > 0.01)
    masked = torch.full_like(iou, float("-inf"))
    cols = torch.arange(num_gt, device=anchors.device).expand_as(cand)
    masked[cand[positive], cols[positive]] = iou[cand[positive], cols[positive]]
    best, arg = masked.max(dim=1)
    matches[best > float("-inf")] = arg[best > float("-inf")]
    if ignored is not None:
        matches[ignored & (matches < 0)] = -2
    return matches, thr


def random_boxes(n, height, width, seed, min_side=4.0, max_side=400.0, integer=False):
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(
        torch.empty(n).uniform_(
            float(torch.tensor(min_side).log()), float(torch.tensor(max_side).log()), generator=g
        )
    )
    ratio = torch.exp(torch.empty(n).uniform_(-1.0, 1.0, generator=g))
    w, h = side * ratio.sqrt(), side / ratio.sqrt()
    cx, cy = torch.rand(n, generator=g) * width, torch.rand(n, generator=g) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes.round() if integer else boxes


def check(levels, gt, topk=9, ignore=None, chunk=256):
    matcher = ATSSMatcher(topk, gt_chunk_size=chunk)
    ignore_boxes = Boxes(ignore) if ignore is not None else None
    result = matcher.match([Boxes(x) for x in levels], Boxes(gt), ignore_boxes=ignore_boxes)
    ignored = None
    if ignore is not None:
        ignored = matcher._ignored_anchors(torch.cat(levels), ignore)
    expected, thr = exhaustive(levels, gt, topk, ignored)
    assert torch.equal(result.matches, expected)
    assert torch.equal(result.thresholds, thr)
    return result.matches


@pytest.fixture
def one_thread():
    # Many small ops: on a busy machine, waiting for a second intra-op thread dominates.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_random_realistic_boxes(offset):
    levels = atss_levels(480, 640, offset)
    matches = check(levels, random_boxes(300, 480, 640, seed=1))
    assert (matches >= 0).sum() > 300  # a real workload, not all background


def test_crowded_integer_boxes_with_distance_ties():
    # 2000 GTs on a 256 x 320 image, integer corners: centres on grid points and half-points,
    # so many equal distances at the topk boundary.
    levels = atss_levels(256, 320)
    gt = random_boxes(2000, 256, 320, seed=2, min_side=2.0, max_side=80.0, integer=True)
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    check(levels, gt)


def test_centres_on_grid_points_and_midpoints():
    levels = atss_levels(256, 256)
    c = torch.arange(0, 257, 4.0)
    cx, cy = torch.meshgrid(c, c, indexing="xy")
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    half = 6 + (torch.arange(len(cx)) % 7) * 5.0
    gt = torch.stack([cx - half, cy - half, cx + half, cy + half], 1)
    check(levels, gt)


def test_border_outside_and_degenerate_boxes():
    levels = atss_levels(320, 448)
    gt = torch.cat(
        [
            random_boxes(200, 320, 448, seed=3) - 150,  # many centres beyond the top-left
            random_boxes(200, 320, 448, seed=4) + 200,  # beyond the bottom-right
            torch.tensor(
                [
                    [0.0, 0, 448, 320],
                    [-500, -500, 1000, 900],
                    [10, 10, 10, 10],
                    [5, 5, 6, 300],
                    [100, 50, 100.5, 50.5],
                ]
            ),
        ]
    )
    check(levels, gt)


@pytest.mark.parametrize("size", [(8, 4000), (4000, 8), (16, 4000)])
def test_thin_images(size):
    # P3 is 1 x 500, 500 x 1 or 2 x 500 anchors: windows hold fewer than topk + 1 anchors or
    # lie along a single row.
    height, width = size
    levels = atss_levels(height, width)
    gt = random_boxes(600, height, width, seed=11, min_side=2.0, max_side=30.0)
    check(levels, gt, chunk=1024)  # one chunk: enough pairs for the windowed search


@pytest.mark.parametrize("topk", [1, 4, 9, 16, 30])
def test_other_topk(topk):
    levels = atss_levels(384, 512, 0.5)
    check(levels, random_boxes(150, 384, 512, seed=10 + topk), topk=topk)


def test_ignore_regions():
    levels = atss_levels(320, 320)
    gt = random_boxes(300, 320, 320, seed=5)
    ignore = torch.tensor([[0.0, 0, 120, 120], [200, 180, 320, 320], [150, 10, 160, 20]])
    matches = check(levels, gt, ignore=ignore)
    assert (matches == ATSSMatcher.IGNORE).any()


def test_anchors_not_on_a_grid_use_the_full_search():
    levels = atss_levels(320, 320)
    g = torch.Generator().manual_seed(6)
    shuffled = [x[torch.randperm(len(x), generator=g)] for x in levels]
    jittered = [x + torch.rand(len(x), 1, generator=g) * 3 for x in levels]
    gt = random_boxes(300, 320, 320, seed=7)
    check(shuffled, gt)
    check(jittered, gt)


def test_chunk_size_does_not_change_result(one_thread):
    levels = atss_levels(256, 320)
    gt = random_boxes(300, 256, 320, seed=8, integer=True)
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    boxes = [Boxes(x) for x in levels]
    # One chunk of 300 GTs takes the windowed search on P3; small chunks take the full one.
    full = ATSSMatcher(9, gt_chunk_size=10_000)(boxes, Boxes(gt))
    for chunk in (3, 64, 299):
        assert torch.equal(ATSSMatcher(9, gt_chunk_size=chunk)(boxes, Boxes(gt)), full)


def test_windowed_search_is_used(monkeypatch, one_thread):
    """On 800x1333 anchors with 500 random GTs, almost every (GT, large level) pair is answered
    from its window (its speed is measured by tools/benchmark_matcher.py, not here)."""
    levels = atss_levels(800, 1344)
    gt = random_boxes(500, 800, 1333, seed=9, min_side=12.0, max_side=600.0)
    boxes = [Boxes(x) for x in levels]
    matcher = ATSSMatcher(9)

    fallbacks = []
    real = matcher_module._nearest_full

    def counting(ctr, gt_ctr, k, ignored):
        fallbacks.append((len(ctr), len(gt_ctr)))
        return real(ctr, gt_ctr, k, ignored)

    monkeypatch.setattr(matcher_module, "_nearest_full", counting)
    matches = matcher(boxes, Boxes(gt))
    monkeypatch.undo()
    # P6 (13x21) and P7 (7x11) are too small for windows; P3-P5 (16800, 4200, 1050 anchors)
    # answer from windows except for rare GTs.
    windowed_levels = {len(x) for x in levels[:3]}
    fallback_gts = sum(g for n, g in fallbacks if n in windowed_levels)
    assert fallback_gts < 0.02 * 3 * len(gt)

    expected, _ = exhaustive(levels, gt)
    assert torch.equal(matches, expected)


@pytest.mark.parametrize("force_one_positive", [False, True])
def test_batch_equals_one_image_at_a_time(force_one_positive, one_thread):
    """match_batch: images with 0, 1, 40 and 300 GTs, chunks of 7 GTs that straddle images,
    duplicated GT boxes (exact IoU ties, the lower index wins) across chunk boundaries, tiny
    boxes (forced positives): per image the exhaustive computation's matches and thresholds."""
    levels = atss_levels(256, 320)
    gts = [random_boxes(n, 256, 320, seed=20 + n, max_side=120.0) for n in (0, 1, 40, 300)]
    gts[2][5:7] = gts[2][4]  # GTs 4, 5, 6 identical: ties resolved to GT 4
    gts[3][:10, 2:] = gts[3][:10, :2] + 1.0  # 1x1 px boxes: no centre inside, no positive
    boxes = [Boxes(x) for x in levels]
    for chunk in (7, 256):
        matcher = ATSSMatcher(9, gt_chunk_size=chunk, force_one_positive=force_one_positive)
        matches, thresholds = matcher.match_batch(boxes, [Boxes(g) for g in gts])
        assert matches.shape == (len(gts), sum(len(x) for x in levels))
        for i, gt in enumerate(gts):
            one = matcher.match(boxes, Boxes(gt))
            assert torch.equal(matches[i], one.matches)
            assert torch.equal(thresholds[i], one.thresholds)
            if not force_one_positive:
                expected, thr = exhaustive(levels, gt)
                assert torch.equal(matches[i], expected)
                assert torch.equal(thresholds[i], thr)
        assert not (matches[2] == 5).any() and not (matches[2] == 6).any()
        assert (matches[2] == 4).any()
        assert (matches[0] == -1).all()


def test_batch_of_images_without_gt():
    levels = atss_levels(64, 96)
    matches, thresholds = ATSSMatcher(9).match_batch(
        [Boxes(x) for x in levels], [Boxes(torch.zeros(0, 4))] * 2
    )
    assert matches.shape == (2, sum(len(x) for x in levels))
    assert (matches == -1).all()
    assert [len(t) for t in thresholds] == [0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_gt", [50, 3000])
def test_cuda_matches_exhaustive(num_gt):
    # 3000 GTs in one chunk on 800x1344 anchors: enough pairs for the windowed search on P3.
    levels = [x.cuda() for x in atss_levels(800, 1344)]
    gt = random_boxes(num_gt, 800, 1333, seed=num_gt, min_side=12.0, max_side=600.0).cuda()
    matcher = ATSSMatcher(9, gt_chunk_size=4096)
    result = matcher.match([Boxes(x) for x in levels], Boxes(gt))
    expected, thr = exhaustive(levels, gt)  # on the GPU too
    assert torch.equal(result.matches, expected)
    assert_same_cuda_thresholds(result.thresholds, thr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_exhaustive():
    levels = [x.cuda() for x in atss_levels(800, 1344)]
    gts = [
        random_boxes(n, 800, 1333, seed=30 + n, min_side=12.0, max_side=600.0).cuda()
        for n in (0, 50, 300)
    ]
    matches, thresholds = ATSSMatcher(9).match_batch(
        [Boxes(x) for x in levels], [Boxes(g) for g in gts]
    )
    for i, gt in enumerate(gts):
        expected, thr = exhaustive(levels, gt)
        assert torch.equal(matches[i], expected)
        assert_same_cuda_thresholds(thresholds[i], thr)


def assert_same_cuda_thresholds(actual, expected):
    """The matcher reduces each GT's IoUs along a row of a (G, C) matrix, the reference one GT at
    a time; on the CPU both give the same bits (checked exactly above), on CUDA the two reduction
    kernels may order the additions differently: at most a float32 rounding step apart."""
    assert torch.allclose(actual, expected, rtol=0, atol=1e-6)
