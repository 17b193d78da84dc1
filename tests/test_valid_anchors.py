"""
Valid anchors per image in padded batches (MODEL.ATSS.VALID_ANCHORS_PER_IMAGE), as mmdetection:
``AnchorHead.get_anchors`` takes each image's flags from ``AnchorGenerator.valid_flags`` with the
image's ``pad_shape`` (cells i < min(ceil(pad_h / stride), H), j < min(ceil(pad_w / stride), W)),
and ``ATSSHead._get_targets_single`` (``allowed_border=-1``: ``inside_flags`` are those flags)
assigns and trains on ``flat_anchors[inside_flags]`` alone, with ``num_level_anchors_inside``
per level; the other anchors get label weight 0. Expected values come from hand-placed boxes, a
plain-Python IoU and ``statistics.stdev``, or from the selection run on the valid anchors alone.
"""

import math
import statistics

import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from tiny_setup import bce, focal
from torch import nn

from atss_d2.modeling import ATSS, ATSSBoxCoder, ATSSMatcher

BG, IGNORE = -1, -2
K = 2  # classes; label K is background

# One level, stride 8, 16 px anchors centred at 8 * (col, row) (offset 0), on the 2 x 4 grid of a
# 16 x 32 padded batch: anchor 4 * row + col is [8c - 8, 8r - 8, 8c + 8, 8r + 8].
GRID = [[8 * c - 8, 8 * r - 8, 8 * c + 8, 8 * r + 8] for r in range(2) for c in range(4)]
# Image 1 is 16 x 16: columns 0 and 1 (anchors 0, 1, 4, 5) are valid for it, 2 and 3 are in its
# padding.
VALID_1 = [True, True, False, False, True, True, False, False]


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def thr(candidates, gt) -> float:
    values = [iou(GRID[i], gt) for i in candidates]
    return statistics.mean(values) + statistics.stdev(values)


def level():
    return [Boxes(torch.tensor(GRID, dtype=torch.float32))]


def valid_mask():
    return torch.tensor([[True] * 8, VALID_1])


def test_anchor_in_the_padding_is_never_a_candidate():
    # GT [4, 0, 16, 16] at image 1's right edge, centre (10, 8). Nearest anchor centres: a5
    # (8, 8) at 2, a6 (16, 8) at 6, a1 (8, 0) at 8.2, then a4 (0, 8) and a2 (16, 0) at 10.
    # topk 3: on all anchors a5, a6, a1; on image 1's valid anchors a5, a1, a4 (a6, a2 are in
    # its padding).
    gt = [4.0, 0.0, 16.0, 16.0]
    assert [iou(GRID[i], gt) for i in (5, 6, 1, 4)] == pytest.approx([0.75, 0.4, 96 / 352, 1 / 6])
    gts = [Boxes(torch.tensor([gt])), Boxes(torch.tensor([gt]))]
    matches, thresholds = ATSSMatcher(3).match_batch(level(), gts, valid_mask())
    # Image 0 (16 x 32) has every anchor: the unrestricted selection.
    assert thresholds[0].item() == pytest.approx(thr([5, 6, 1], gt), abs=1e-6)
    assert thresholds[1].item() == pytest.approx(thr([5, 1, 4], gt), abs=1e-6)
    assert thr([5, 6, 1], gt) != pytest.approx(thr([5, 1, 4], gt), abs=1e-3)
    # a5 (IoU 0.75 >= both thresholds, centre inside) is the positive of both; image 1's
    # padding anchors are IGNORE, never background or positive.
    assert matches[0].tolist() == [BG, BG, BG, BG, BG, 0, BG, BG]
    assert matches[1].tolist() == [BG, BG, IGNORE, IGNORE, BG, 0, IGNORE, IGNORE]
    # Without the mask both images get image 0's selection.
    plain, plain_thr = ATSSMatcher(3).match_batch(level(), gts)
    assert torch.equal(plain_thr[1], plain_thr[0]) and plain[1].tolist() == matches[0].tolist()


def test_level_with_fewer_valid_anchors_than_topk():
    # topk 9 on an 8-anchor level: 8 candidates per GT on image 0, but only image 1's 4 valid
    # anchors (a0, a1, a4, a5) for its GT [2, 2, 14, 14]: IoUs 36/364, 72/328, 72/328, 144/256.
    gt = [2.0, 2.0, 14.0, 14.0]
    gts = [Boxes(torch.tensor([gt])), Boxes(torch.tensor([gt]))]
    matches, thresholds = ATSSMatcher(9).match_batch(level(), gts, valid_mask())
    assert thresholds[0].item() == pytest.approx(thr(range(8), gt), abs=1e-6)
    assert thresholds[1].item() == pytest.approx(thr([0, 1, 4, 5], gt), abs=1e-6)
    assert thr([0, 1, 4, 5], gt) == pytest.approx(0.474960, abs=1e-6)  # > a1, a4: only a5
    assert matches[1].tolist() == [BG, BG, IGNORE, IGNORE, BG, 0, IGNORE, IGNORE]
    # One valid anchor: a single candidate has no spread (std 0), its own IoU (64 / 256) is the
    # threshold, and it is positive (centre (0, 0) inside the GT).
    one = torch.tensor([[True] + [False] * 7])
    gt = Boxes(torch.tensor([[-4.0, -4.0, 4.0, 4.0]]))
    m, t = ATSSMatcher(9).match_batch(level(), [gt], one)
    assert t[0].item() == pytest.approx(0.25)
    assert m[0].tolist() == [0] + [IGNORE] * 7


def test_valid_anchors_from_image_sizes_by_hand():
    # Strides 8, 16, 64 on a batch of a 30 x 50 and a 20 x 17 image, padded to 16: batch
    # 32 x 64 (features 4 x 8, 2 x 4, 1 x 1). pad_shape: (32, 64) and (32, 32).
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64], [256]], aspect_ratios=[[1.0]], strides=[8, 16, 64], offset=0.0
    )
    model = make_atss(anchor_generator=gen, size_divisibility=16)
    features = [torch.zeros(2, 1, h, w) for h, w in ((4, 8), (2, 4), (1, 1))]
    valid = model.valid_anchors([(30, 50), (20, 17)], features)
    assert valid.shape == (2, 32 + 8 + 1) and valid.device.type == "cpu"
    assert valid[0].all()  # 32 x 64 is the batch's own size
    # Image 1, stride 8: ceil(32 / 8) = 4 rows, ceil(32 / 8) = 4 of 8 columns.
    p3 = [[c < 4 for c in range(8)] for _ in range(4)]
    # stride 16: 2 rows, 2 of 4 columns; stride 64: ceil(32 / 64) = 1 -> the one cell.
    p4 = [[c < 2 for c in range(4)] for _ in range(2)]
    expected = sum(p3, []) + sum(p4, []) + [True]
    assert valid[1].tolist() == expected
    # Equal sizes, or sizes that round up to the same padded size: every anchor is valid.
    assert model.valid_anchors([(32, 64), (30, 50)], features) is None
    # Without padding to a divisor the image's own size counts: 30 x 50 -> 4 x 7 cells on P3.
    raw = make_atss(anchor_generator=gen, size_divisibility=0)
    valid = raw.valid_anchors([(32, 64), (30, 50)], features)
    assert valid[1, :32].tolist() == [c < 7 for _ in range(4) for c in range(8)]
    assert valid[1, 32:].all()  # ceil(30 / 16) = 2, ceil(50 / 16) = 4; ceil(50 / 64) = 1


def make_atss(**kwargs) -> ATSS:
    args = dict(
        backbone=nn.Identity(),
        head=nn.Identity(),
        head_in_features=["p3"],
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[16]], aspect_ratios=[[1.0]], strides=[8], offset=0.0
        ),
        box_coder=ATSSBoxCoder(),
        matcher=ATSSMatcher(3),
        num_classes=K,
        size_divisibility=8,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    args.update(kwargs)
    return ATSS(**args)


@pytest.mark.parametrize("valid_per_image", [True, False])
def test_padding_anchors_are_in_no_loss(valid_per_image):
    """forward_training on a 16 x 32 image without GT and a 16 x 16 image with the GT of the
    first test ([4, 0, 16, 16], class 1): its positive is a5 either way; with valid anchors per
    image the classification loss leaves image 1's padding anchors (2, 3, 6, 7) out."""
    torch.manual_seed(0)
    model = make_atss(valid_anchors_per_image=valid_per_image)
    logits = torch.randn(2, K, 2, 4)  # (N, K, H, W); anchor 4 * row + col
    ctr = torch.randn(2, 1, 2, 4)
    deltas = torch.zeros(2, 4, 2, 4)  # decoded boxes = the anchors
    images = ImageList(torch.zeros(2, 3, 16, 32), [(16, 32), (16, 16)])
    empty = Instances((16, 32), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    gt = Instances((16, 16), gt_boxes=Boxes(torch.tensor([[4.0, 0.0, 16.0, 16.0]])))
    gt.gt_classes = torch.tensor([1])
    with EventStorage():
        out = model.forward_training(
            images, [torch.zeros(2, 1, 2, 4)], ([logits], [deltas], [ctr]), [empty, gt]
        )
    rows = [logits[i].permute(1, 2, 0).reshape(8, K).tolist() for i in range(2)]
    trained_1 = [0, 1, 4, 5] if valid_per_image else range(8)
    cls = sum(focal(x, 0) for row in rows[0] for x in row)  # image 0: all background
    cls += sum(
        focal(x, int(c == 1 and i == 5)) for i in trained_1 for c, x in enumerate(rows[1][i])
    )
    normaliser = 1 + 1  # max(0, 1) for image 0, max(1, 1) for image 1
    assert out["loss_cls"].item() == pytest.approx(cls / normaliser, rel=1e-5)
    # a5 = [0, 0, 16, 16] against the GT: IoU 0.75 and the enclosure is the union, so GIoU loss
    # 0.25; centre (8, 8): l 4, r 8, t 8, b 8 -> centerness sqrt(1/2) (< 1: normaliser 1).
    ctr_t = math.sqrt(0.5)
    assert out["loss_box_reg"].item() == pytest.approx(2.0 * 0.25 * ctr_t, rel=1e-5)
    ctr_a5 = ctr[1, 0, 1, 1].item()
    assert out["loss_centerness"].item() == pytest.approx(bce(ctr_a5, ctr_t) / 2, rel=1e-5)


def test_same_size_batch_is_unchanged():
    model = make_atss()
    features = [torch.zeros(2, 1, 2, 4)]
    assert model.valid_anchors([(16, 32), (16, 32)], features) is None
    # An image one pixel smaller pads to the same 16 x 32 (divisor 8): still every anchor.
    assert model.valid_anchors([(16, 32), (15, 25)], features) is None


# ------------------------------------------------------------------------------------------
# match_batch with valid anchors == the selection on each image's valid anchors alone
# ------------------------------------------------------------------------------------------
STRIDES = [8, 16, 32, 64, 128]


def grid_levels(height: int, width: int):
    gen = DefaultAnchorGenerator(
        sizes=[[8 * s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES, offset=0.0
    )
    shapes = [(-(-height // s), -(-width // s)) for s in STRIDES]
    return [b.tensor for b in gen([torch.empty(1, 1, h, w) for h, w in shapes])], shapes


def random_boxes(n, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(n).uniform_(math.log(6.0), math.log(200.0), generator=g))
    ratio = torch.exp(torch.empty(n).uniform_(-1.0, 1.0, generator=g))
    w, h = side * ratio.sqrt(), side / ratio.sqrt()
    cx, cy = torch.rand(n, generator=g) * width, torch.rand(n, generator=g) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes.clamp(min=0).minimum(torch.tensor([width, height, width, height]))


@pytest.mark.parametrize("chunk", [7, 256])
def test_batch_with_valid_anchors_equals_each_image_on_its_valid_anchors(chunk):
    """A 256 x 320 padded batch of images 256 x 320, 192 x 160 (padding anchors right next to
    its border) and 40 x 24 (pad 64 x 32: fewer valid anchors than topk on P4-P7): per image,
    ``match`` on the image's valid anchors alone, level by level (mmdetection's
    ``flat_anchors[inside_flags]`` and ``num_level_anchors_inside``), gives the same matches and
    thresholds. 300 GTs on the second image: in chunks of 256 GTs, P3 goes through the windowed
    search, with GTs of the first and the second image in the first chunk."""
    levels, shapes = grid_levels(256, 320)
    sizes = [(256, 320), (192, 160), (40, 24)]
    gts = [random_boxes(n, h, w, seed=n) for n, (h, w) in zip((60, 300, 3), sizes)]
    model = make_atss(
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[8 * s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES, offset=0.0
        ),
        size_divisibility=32,
    )
    valid = model.valid_anchors(sizes, [torch.empty(3, 1, h, w) for h, w in shapes])
    matcher = ATSSMatcher(9, gt_chunk_size=chunk)
    matches, thresholds = matcher.match_batch(
        [Boxes(x) for x in levels], [Boxes(g) for g in gts], valid
    )
    bounds = torch.tensor([0] + [len(x) for x in levels]).cumsum(0).tolist()
    for i, gt in enumerate(gts):
        keep = [valid[i, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        own = matcher.match([Boxes(x[k]) for x, k in zip(levels, keep)], Boxes(gt))
        expected = torch.full((bounds[-1],), IGNORE, dtype=torch.long)
        expected[valid[i]] = own.matches
        assert torch.equal(matches[i], expected), i
        assert torch.equal(thresholds[i], own.thresholds), i
    assert (matches[2][~valid[2]] == IGNORE).all() and (~valid[2]).sum() > 0
    assert (matches >= 0).sum() > 300  # positives on all three images
    for i in range(3):
        assert (matches[i] >= 0).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_valid_anchors_matches_cpu():
    levels, shapes = grid_levels(256, 320)
    sizes = [(256, 320), (192, 160), (40, 24)]
    gts = [random_boxes(n, h, w, seed=n) for n, (h, w) in zip((60, 300, 3), sizes)]
    gen = DefaultAnchorGenerator(
        sizes=[[8 * s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES, offset=0.0
    )
    model = make_atss(anchor_generator=gen, size_divisibility=32)
    valid = model.valid_anchors(sizes, [torch.empty(3, 1, h, w) for h, w in shapes])
    matcher = ATSSMatcher(9)
    cpu, cpu_thr = matcher.match_batch([Boxes(x) for x in levels], [Boxes(g) for g in gts], valid)
    cuda, cuda_thr = matcher.match_batch(
        [Boxes(x.cuda()) for x in levels], [Boxes(g.cuda()) for g in gts], valid
    )
    assert torch.equal(cuda.cpu(), cpu)
    for a, b in zip(cuda_thr, cpu_thr):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-6)
