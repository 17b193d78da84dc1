"""
Forward + backward of a small ATSS (R-18, 64-channel FPN, one tower conv) on the CPU, on the
inputs that broke the reference implementations: images without GT, whole batches without GT,
GTs under 2 px, GTs touching the border and images smaller than the coarsest stride.
"""

import math
import statistics

import pytest
import tiny_setup
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

NUM_CLASSES = 3


def small_cfg(*extra):
    return tiny_setup.small_cfg(*extra, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(small_cfg())
    m.train()
    return m


def sample(h, w, boxes=(), classes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    if classes is None:
        classes = [i % NUM_CLASSES for i in range(len(boxes))]
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return {"image": torch.rand(3, h, w, generator=g) * 255, "instances": inst}


def train_step(model, batch):
    model.zero_grad(set_to_none=True)
    with EventStorage() as storage:
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        # every trainable parameter is reached (DDP would hang otherwise) with a finite grad
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    scalars = {k: v.latest() for k, v in storage.histories().items()}
    return losses, scalars


def test_ordinary_batch(model):
    batch = [
        sample(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], seed=1),
        sample(80, 112, [[5, 5, 40, 30], [30, 20, 100, 75], [60, 10, 90, 40]], seed=2),
    ]
    losses, scalars = train_step(model, batch)
    assert losses["loss_box_reg"] > 0 and losses["loss_centerness"] > 0
    assert scalars["atss/num_pos_per_image"] > 0
    assert 0 < scalars["atss/iou_threshold_mean"] < 1


def test_image_without_gt_next_to_one_with_gt(model):
    batch = [sample(96, 128, [[10, 12, 60, 70]], seed=3), sample(96, 128, [], seed=4)]
    losses, scalars = train_step(model, batch)
    assert losses["loss_box_reg"] > 0
    assert scalars["atss/num_pos_per_image"] > 0
    assert "atss/iou_threshold_mean" in scalars


def test_batch_without_any_gt(model):
    batch = [sample(96, 128, [], seed=5), sample(64, 96, [], seed=6)]
    losses, scalars = train_step(model, batch)
    # no positive anywhere: box and centerness losses are exactly 0 (but in the graph: checked
    # by the gradient test in train_step); the classifier still learns background
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_centerness"].item() == 0.0
    assert losses["loss_cls"].item() > 0
    assert scalars["atss/num_pos_per_image"] == 0


def test_gt_smaller_than_two_pixels(model):
    batch = [sample(96, 128, [[40.2, 40.3, 41.5, 41.2], [70, 30, 71, 31.5]], seed=7)]
    losses, _ = train_step(model, batch)
    assert all(math.isfinite(v.item()) for v in losses.values())


def test_gt_touching_the_border(model):
    batch = [
        sample(96, 128, [[0, 0, 128, 96], [0, 30, 50, 96], [100, 0, 128, 20]], seed=8),
        sample(64, 64, [[0, 0, 64, 10]], seed=9),
    ]
    losses, scalars = train_step(model, batch)
    assert losses["loss_box_reg"] > 0
    assert scalars["atss/num_pos_per_image"] > 0


def test_image_smaller_than_the_largest_stride(model):
    # 20 x 30 is padded to 32 x 32: P6 and P7 are 1 x 1, fewer anchors than topk on them.
    # GTs this small against 64+ px anchors get no positive by the ATSS rule (by hand for the
    # first: the 9 P3 candidates all contain it, IoU 192/4096 = 0.047 each; with P4..P7's
    # 4 x 0.0117, 0.0029, 0.0007, 0.0002, mean + std = 0.0295 + 0.0206 = 0.050 > 0.047).
    batch = [sample(20, 30, [[2, 3, 18, 15]], seed=10), sample(24, 24, [[1, 1, 23, 23]], seed=11)]
    losses, scalars = train_step(model, batch)
    assert scalars["atss/num_pos_per_image"] == 0
    assert losses["loss_box_reg"].item() == 0.0


def test_tiny_image_with_force_one_positive():
    torch.manual_seed(0)
    m = build_model(small_cfg("MODEL.ATSS.FORCE_ONE_POSITIVE", True))
    m.train()
    batch = [sample(20, 30, [[2, 3, 18, 15]], seed=10), sample(24, 24, [[1, 1, 23, 23]], seed=11)]
    losses, scalars = train_step(m, batch)
    assert scalars["atss/num_pos_per_image"] == 1
    assert losses["loss_box_reg"] > 0 and losses["loss_centerness"] > 0


def test_many_gts_and_chunking():
    # 300 GTs processed 16 at a time
    torch.manual_seed(0)
    m = build_model(small_cfg("MODEL.ATSS.MATCHER_GT_CHUNK", 16))
    m.train()
    g = torch.Generator().manual_seed(12)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([100.0, 70.0])
    wh = torch.rand(300, 2, generator=g) * 25 + 1
    boxes = torch.cat([xy, xy + wh], dim=1).tolist()
    losses, scalars = train_step(m, [sample(96, 128, boxes, seed=13)])
    assert scalars["atss/num_pos_per_image"] > 0


@pytest.mark.parametrize(
    "extra",
    [
        ("MODEL.ATSS.REGRESSION_TYPE", "POINT"),
        # the authors' conventions (configs/Original)
        ("MODEL.ATSS.LEGACY_PLUS_ONE", True, "MODEL.ATSS.REG_NORM_CLAMP", False),
    ],
)
def test_variants(extra):
    torch.manual_seed(0)
    m = build_model(small_cfg(*extra))
    m.train()
    batch = [
        sample(96, 128, [[10, 12, 60, 70], [0, 0, 128, 96], [40.2, 40.3, 41.5, 41.2]], seed=14),
        sample(20, 30, [], seed=15),
    ]
    losses, scalars = train_step(m, batch)
    assert losses["loss_box_reg"] > 0
    assert scalars["atss/num_pos_per_image"] > 0


def test_point_regression_starts_from_the_anchor_boxes():
    # The authors' ATSSHead with REGRESSION_TYPE POINT: bbox_pred's bias is 4 (BOX: 0). On a
    # featureless input (the towers give 0) every distance is 4 strides, so each decoded box is
    # its 8 x stride anchor.
    torch.manual_seed(0)
    box = build_model(small_cfg())
    assert torch.equal(box.head.bbox_pred.bias, torch.zeros(4))
    point = build_model(small_cfg("MODEL.ATSS.REGRESSION_TYPE", "POINT")).eval()
    assert torch.equal(point.head.bbox_pred.bias, torch.full((4,), 4.0))
    features = [torch.zeros(1, 64, s, s) for s in (8, 4, 2, 1, 1)]
    with torch.no_grad():
        _, reg, _ = point.head(features)
    anchors = point.anchor_generator(features)
    for level, (r, a) in enumerate(zip(reg, anchors)):
        assert torch.equal(r, torch.full_like(r, 4.0)), level
        decoded = point.box_coder.apply_deltas(r.permute(0, 2, 3, 1).reshape(-1, 4), a.tensor)
        torch.testing.assert_close(decoded, a.tensor)


def test_labels_and_statistics_by_hand(model):
    # A 64 x 64 image whose GT is the whole image, i.e. exactly the 64 px P3 anchor centred at
    # (32, 32) (anchors centred at stride * i). Feature maps: P3 8x8, P4 4x4, P5 2x2, P6, P7 1x1.
    # Candidates and IoUs by hand:
    #   P3 (64 px): the centre anchor 1; its 4 edge neighbours 56*64/4608; 4 diagonal 56*56/5056
    #   P4 (128 px): the 9 nearest all contain the GT: 4096/16384 each
    #   P5 (256 px): all 4 contain it: 4096/65536; P6: 4096/512^2; P7: 4096/1024^2
    ious = (
        [1.0] + [3584 / 4608] * 4 + [3136 / 5056] * 4
        + [0.25] * 9 + [1 / 16] * 4 + [1 / 64] + [1 / 256]
    )  # fmt: skip
    thr = statistics.mean(ious) + statistics.stdev(ious)
    assert 3136 / 5056 < thr < 3584 / 4608  # -> the centre anchor and its 4 edge neighbours
    batch = [sample(64, 64, [[0, 0, 64, 64]], classes=[2], seed=16)]
    _, scalars = train_step(model, batch)
    assert scalars["atss/num_pos_per_image"] == 5
    assert scalars["atss/iou_threshold_mean"] == pytest.approx(thr, abs=1e-5)

    anchors = model.anchor_generator([torch.zeros(1, 1, s, s) for s in (8, 4, 2, 1, 1)])
    labels, matched = model.label_anchors(anchors, [batch[0]["instances"]])
    labels = labels[0].tolist()
    # P3 anchors are row-major: index 8 * row + col, centre (8 * col, 8 * row)
    positives = {8 * 4 + 4, 8 * 4 + 3, 8 * 4 + 5, 8 * 3 + 4, 8 * 5 + 4}
    assert {i for i, c in enumerate(labels) if c != NUM_CLASSES} == positives
    assert all(labels[i] == 2 for i in positives)
    for i in positives:
        assert matched[0][i].tolist() == [0.0, 0.0, 64.0, 64.0]
