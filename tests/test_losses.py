"""
ATSS losses, box codings and centerness targets on tiny inputs, against values worked out by
hand with the formulas of mmdetection's mmdet/models/dense_heads/atss_head.py and the authors'
atss_core/modeling/rpn/atss/loss.py (focal loss / N_pos, centerness-weighted GIoU x 2 / sum of
centerness, centerness BCE / N_pos).
"""

import math

import pytest
import torch
from detectron2.structures import Boxes
from tiny_setup import bare_atss, bce, focal, sigmoid

from atss_d2.modeling import ATSS, ATSSBoxCoder, ATSSPointCoder
from atss_d2.modeling.losses import centerness_target, giou_loss

K = 2  # classes; label K is background


def make_atss(**kwargs) -> ATSS:
    """An ATSS whose loss/inference code can be called directly (no backbone or head needed)."""
    return bare_atss(K, **kwargs)


def focal_sum(logits, labels) -> float:
    """Sum over anchors (label >= 0) and classes, one-hot targets, label K = background."""
    total = 0.0
    for row, label in zip(logits, labels):
        if label < 0:
            continue
        total += sum(focal(x, int(c == label)) for c, x in enumerate(row))
    return total


# ------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------
def test_giou_loss_values():
    pred = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # identical -> 0
            [0.0, 0.0, 1.0, 1.0],  # disjoint, 1 px apart: GIoU = 0 - (3 - 2) / 3
            [0.0, 0.0, 2.0, 2.0],  # contains the target: IoU 1/4, enclosure = union
            [0.0, 0.0, 10.0, 10.0],  # vs [2,4,20,8]: IoU 32/140, enclosure 200
        ]
    )
    target = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 4.0, 20.0, 8.0]]
    )
    expected = [0.0, 4.0 / 3.0, 0.75, 1 - (32 / 140 - 60 / 200)]
    assert giou_loss(pred, target).tolist() == pytest.approx(expected, abs=1e-6)
    # far apart: GIoU -> -1, loss -> 2
    far = giou_loss(
        torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[99.0, 99.0, 100.0, 100.0]])
    )
    assert far.item() == pytest.approx(2 - 2 / 10000, abs=1e-6)


def test_centerness_target_formula():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # centre (5, 5)
            [0.0, 0.0, 10.0, 10.0],
            [4.0, 4.0, 6.0, 6.0],  # centre (5, 5)
            [10.0, 0.0, 20.0, 10.0],  # centre (15, 5): outside the GT below
            [0.0, 0.0, 20.0, 10.0],  # centre (10, 5): on the GT's right edge
        ]
    )
    gts = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # l=r=t=b=5 -> 1
            [2.0, 4.0, 20.0, 8.0],  # l=3 r=15 t=1 b=3 -> sqrt(3/15 * 1/3)
            [1.0, 3.0, 7.0, 9.0],  # l=4 r=2 t=2 b=4 -> sqrt(2/4 * 2/4) = 0.5
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
        ]
    )
    got = centerness_target(anchors, gts)
    assert torch.isfinite(got).all()
    assert got.tolist() == pytest.approx([1.0, math.sqrt(1 / 15), 0.5, 0.0, 0.0], abs=1e-6)
    # zero-area GT with the centre on it: finite
    zero = centerness_target(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5, 5, 5]]))
    assert torch.isfinite(zero).all() and zero.item() == 0.0


def test_box_coder_values():
    coder = ATSSBoxCoder()  # weights 10, 10, 5, 5
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # dx = 1 -> shift 1/10 of the width; dw = 5 ln 2 -> width x2
    deltas = torch.tensor([[1.0, 0.0, 5 * math.log(2.0), 0.0]])
    assert coder.apply_deltas(deltas, anchor).tolist()[0] == pytest.approx(
        [-4, 0, 16, 10], abs=1e-5
    )
    target = torch.tensor([[2.0, -5.0, 12.0, 15.0]])  # centre (7, 5), 10 x 20
    d = coder.get_deltas(anchor, target)
    assert d.tolist()[0] == pytest.approx([10 * 0.2, 0.0, 0.0, 5 * math.log(2.0)], abs=1e-5)
    assert coder.apply_deltas(d, anchor).tolist()[0] == pytest.approx(target[0].tolist(), abs=1e-4)
    # dw, dh clamped at log(1000 / 16) (both signs)
    huge = torch.tensor([[0.0, 0.0, 1000.0, -1000.0]])
    box = coder.apply_deltas(huge, anchor)[0]
    assert (box[2] - box[0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)
    assert (box[3] - box[1]).item() == pytest.approx(10 * 16 / 1000, rel=1e-5)
    assert torch.isfinite(box).all()


def test_point_coder_values():
    coder = ATSSPointCoder(8.0)  # anchors are 8 x stride: a 64 px anchor has stride 8
    anchor = torch.tensor([[-32.0, -32.0, 32.0, 32.0]])  # centre (0, 0)
    deltas = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # l, t, r, b in strides
    assert coder.apply_deltas(deltas, anchor).tolist()[0] == pytest.approx([-8, -16, 24, 32])
    assert coder.get_deltas(anchor, torch.tensor([[-8.0, -16.0, 24.0, 32.0]])).tolist()[0] == (
        pytest.approx([1, 2, 3, 4])
    )


# ------------------------------------------------------------------------------------------
# ATSS.losses
# ------------------------------------------------------------------------------------------
ANCHORS = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]
LOGITS = [[0.5, -1.0], [1.0, -2.0], [-0.5, 2.0]]
DELTAS = [[1.0, 0.0, 5 * math.log(2.0), 0.0], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]]
CTR = [0.3, 0.7, -0.2]
GTS = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0], [2.0, 4.0, 20.0, 8.0]]
# Anchor 0 -> decoded [-4, 0, 16, 10] vs [0, 0, 10, 10]: IoU 1/2, enclosure = union: loss 0.5,
# centerness 1. Anchor 2 -> [0, 0, 10, 10] vs [2, 4, 20, 8]: loss 1 - (32/140 - 60/200),
# centerness sqrt(1/15).
GIOU = [0.5, None, 1 - (32 / 140 - 60 / 200)]
CTR_T = [1.0, None, math.sqrt(1 / 15)]


def run_losses(model, labels, levels=(3,), dtype=torch.float32, requires_grad=False):
    """One image, anchors/predictions from the tables above split into levels."""
    logits = torch.tensor(LOGITS, dtype=dtype)[None]
    deltas = torch.tensor(DELTAS, dtype=dtype)[None]
    ctr = torch.tensor(CTR, dtype=dtype)[None, :, None]
    for t in (logits, deltas, ctr):
        t.requires_grad_(requires_grad)
    split = list(levels)
    anchors = [Boxes(a) for a in torch.tensor(ANCHORS).split(split)]
    out = model.losses(
        anchors,
        list(logits.split(split, dim=1)),
        [torch.tensor(labels)],
        list(deltas.split(split, dim=1)),
        [torch.tensor(GTS)],
        list(ctr.split(split, dim=1)),
    )
    return out, (logits, deltas, ctr)


def test_losses_by_hand():
    labels = [0, K, 1]  # anchors 0 and 2 positive
    out, _ = run_losses(make_atss(), labels)
    n_pos = 2
    assert out["loss_cls"].item() == pytest.approx(focal_sum(LOGITS, labels) / n_pos, rel=1e-5)
    ctr_sum = CTR_T[0] + CTR_T[2]  # 1.258 >= 1
    box = 2.0 * (GIOU[0] * CTR_T[0] + GIOU[2] * CTR_T[2]) / ctr_sum
    assert out["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)
    ctr = (bce(CTR[0], CTR_T[0]) + bce(CTR[2], CTR_T[2])) / n_pos
    assert out["loss_centerness"].item() == pytest.approx(ctr, rel=1e-5)
    assert set(out) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    # the same anchors split over two levels give the same numbers
    out2, _ = run_losses(make_atss(), labels, levels=(1, 2))
    for k in out:
        assert out2[k].item() == pytest.approx(out[k].item(), rel=1e-6)


def test_box_normaliser_clamped_at_one():
    labels = [K, K, 1]  # only anchor 2: sum of centerness sqrt(1/15) = 0.258 < 1
    out, _ = run_losses(make_atss(), labels)
    assert out["loss_box_reg"].item() == pytest.approx(2.0 * GIOU[2] * CTR_T[2] / 1.0, rel=1e-5)
    assert out["loss_cls"].item() == pytest.approx(focal_sum(LOGITS, labels) / 1, rel=1e-5)
    assert out["loss_centerness"].item() == pytest.approx(bce(CTR[2], CTR_T[2]) / 1, rel=1e-5)
    # The authors' code (REG_NORM_CLAMP False) divides by the sum itself.
    out, _ = run_losses(make_atss(reg_norm_clamp=False), labels)
    assert out["loss_box_reg"].item() == pytest.approx(2.0 * GIOU[2], rel=1e-5)


def test_reg_loss_weight_and_focal_parameters():
    labels = [0, K, 1]
    out, _ = run_losses(
        make_atss(reg_loss_weight=1.0, focal_loss_alpha=0.5, focal_loss_gamma=0.0), labels
    )
    expected_cls = 0.0
    for row, label in zip(LOGITS, labels):
        expected_cls += sum(
            focal(x, int(c == label), alpha=0.5, gamma=0.0) for c, x in enumerate(row)
        )
    assert out["loss_cls"].item() == pytest.approx(expected_cls / 2, rel=1e-5)
    box = (GIOU[0] * CTR_T[0] + GIOU[2] * CTR_T[2]) / (CTR_T[0] + CTR_T[2])
    assert out["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)


def test_ignored_anchors_excluded_from_cls_loss():
    labels = [0, -1, 1]  # anchor 1 ignored: no classification loss at all
    out, _ = run_losses(make_atss(), labels)
    assert out["loss_cls"].item() == pytest.approx(focal_sum(LOGITS, labels) / 2, rel=1e-5)
    assert focal_sum(LOGITS, labels) < focal_sum(LOGITS, [0, K, 1])


def test_no_positive_anywhere():
    labels = [K, K, K]
    out, (logits, deltas, ctr) = run_losses(make_atss(), labels, requires_grad=True)
    # N_pos = 0 is floored at 1: the classification loss is the plain focal sum on negatives.
    assert out["loss_cls"].item() == pytest.approx(focal_sum(LOGITS, labels), rel=1e-5)
    assert out["loss_box_reg"].item() == 0.0
    assert out["loss_centerness"].item() == 0.0
    for v in out.values():
        assert torch.isfinite(v) and v.requires_grad and v.grad_fn is not None
    sum(out.values()).backward()
    # every prediction gets a gradient (zero for the box and centerness branches)
    assert deltas.grad is not None and torch.equal(deltas.grad, torch.zeros_like(deltas))
    assert ctr.grad is not None and torch.equal(ctr.grad, torch.zeros_like(ctr))
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_no_positive_with_everything_ignored():
    out, (logits, deltas, ctr) = run_losses(make_atss(), [-1, -1, -1], requires_grad=True)
    for v in out.values():
        assert v.item() == 0.0 and v.grad_fn is not None
    sum(out.values()).backward()
    for t in (logits, deltas, ctr):
        assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


def test_gradients_of_positive_case():
    out, (logits, deltas, ctr) = run_losses(make_atss(), [0, K, 1], requires_grad=True)
    sum(out.values()).backward()
    # the background anchor gets no box or centerness gradient, the positives do
    assert torch.equal(deltas.grad[0, 1], torch.zeros(4))
    assert ctr.grad[0, 1, 0] == 0
    assert deltas.grad[0, 0].abs().sum() > 0 and ctr.grad[0, 2, 0] != 0
    # d(loss_ctr)/d(logit) = (sigmoid(x) - t) / N_pos
    assert ctr.grad[0, 0, 0].item() == pytest.approx((sigmoid(CTR[0]) - CTR_T[0]) / 2, rel=1e-4)


def test_losses_in_float32_under_half_precision_inputs():
    labels = [0, K, 1]
    out, _ = run_losses(make_atss(), labels, dtype=torch.bfloat16)
    for v in out.values():
        assert v.dtype == torch.float32
    # the same numbers as float32 inputs rounded to bfloat16 (not bfloat16 arithmetic)
    logits = torch.tensor(LOGITS).bfloat16().float().tolist()
    assert out["loss_cls"].item() == pytest.approx(focal_sum(logits, labels) / 2, rel=1e-5)
    # and inside an autocast region
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac, _ = run_losses(make_atss(), labels, dtype=torch.bfloat16)
    for k, v in out_ac.items():
        assert v.dtype == torch.float32
        assert v.item() == pytest.approx(out[k].item(), rel=1e-5)


def test_batch_of_two_images_concatenates_levels_consistently():
    model = make_atss()
    # level 0: one anchor, level 1: two anchors; image 0 positive on level 1's last anchor,
    # image 1 positive on level 0's anchor.
    anchors = [Boxes(torch.tensor([ANCHORS[0]])), Boxes(torch.tensor(ANCHORS[1:]))]
    logits = torch.tensor([LOGITS, LOGITS[::-1]])  # (2, 3, K)
    deltas = torch.tensor([DELTAS, DELTAS])
    ctr = torch.tensor([CTR, CTR])[..., None]
    labels = [torch.tensor([K, K, 1]), torch.tensor([0, K, K])]
    gts = [torch.tensor(GTS), torch.tensor(GTS)]
    split = [1, 2]
    out = model.losses(
        anchors,
        list(logits.split(split, 1)),
        labels,
        list(deltas.split(split, 1)),
        gts,
        list(ctr.split(split, 1)),
    )
    n_pos = 2
    cls = focal_sum(LOGITS, [K, K, 1]) + focal_sum(LOGITS[::-1], [0, K, K])
    assert out["loss_cls"].item() == pytest.approx(cls / n_pos, rel=1e-5)
    box = 2.0 * (GIOU[2] * CTR_T[2] + GIOU[0] * CTR_T[0]) / (CTR_T[0] + CTR_T[2])
    assert out["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)
    ctr_loss = (bce(CTR[2], CTR_T[2]) + bce(CTR[0], CTR_T[0])) / n_pos
    assert out["loss_centerness"].item() == pytest.approx(ctr_loss, rel=1e-5)


def test_point_regression_losses():
    # POINT coding: a 64 px anchor at stride 8 with distances (l, t, r, b) = (1, 1, 1, 1) strides
    # decodes to [-8, -8, 8, 8] around its centre (0, 0); GT [-8, -8, 8, 16]: IoU 256/384,
    # enclosure = union -> loss 1/3; centerness sqrt(1 * 8/16).
    model = make_atss(box_coder=ATSSPointCoder(8.0))
    anchors = [Boxes(torch.tensor([[-32.0, -32.0, 32.0, 32.0]]))]
    out = model.losses(
        anchors,
        [torch.tensor([[[3.0, -3.0]]])],
        [torch.tensor([0])],
        [torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])],
        [torch.tensor([[-8.0, -8.0, 8.0, 16.0]])],
        [torch.tensor([[[0.1]]])],
    )
    ctr_t = math.sqrt(0.5)
    assert out["loss_box_reg"].item() == pytest.approx(2.0 * (1 / 3) * ctr_t / 1.0, rel=1e-5)
    assert out["loss_centerness"].item() == pytest.approx(bce(0.1, ctr_t), rel=1e-5)
    assert out["loss_cls"].item() == pytest.approx(focal(3.0, 1) + focal(-3.0, 0), rel=1e-5)


# ------------------------------------------------------------------------------------------
# Normaliser of the classification and centerness losses (MODEL.ATSS.NUM_POS_NORM)
# ------------------------------------------------------------------------------------------
def run_two_images(model, labels_0, labels_1):
    """Image 0: the tables above; image 1: the same anchors and predictions, all labelled
    ``labels_1`` (e.g. an image without GT: every anchor background)."""
    logits = torch.tensor([LOGITS, LOGITS[::-1]])  # (2, 3, K)
    deltas = torch.tensor([DELTAS, DELTAS])
    ctr = torch.tensor([CTR, CTR])[..., None]
    return model.losses(
        [Boxes(torch.tensor(ANCHORS))],
        [logits],
        [torch.tensor(labels_0), torch.tensor(labels_1)],
        [deltas],
        [torch.tensor(GTS), torch.tensor(GTS)],
        [ctr],
    )


@pytest.mark.parametrize("norm", ["per_image", "total"])
def test_image_without_gt_in_the_normaliser(norm):
    # Image 0: 2 positives (anchors 0 and 2); image 1 has no GT. mmdetection sums
    # max(num_pos_i, 1) over the images (SamplingResult.avg_factor): 2 + 1 = 3; the authors
    # floor the batch's positives once: max(2 + 0, 1) = 2.
    labels_0, labels_1 = [0, K, 1], [K, K, K]
    out = run_two_images(make_atss(num_pos_norm=norm), labels_0, labels_1)
    normaliser = {"per_image": 2 + 1, "total": 2}[norm]
    cls = focal_sum(LOGITS, labels_0) + focal_sum(LOGITS[::-1], labels_1)
    assert out["loss_cls"].item() == pytest.approx(cls / normaliser, rel=1e-5)
    ctr = bce(CTR[0], CTR_T[0]) + bce(CTR[2], CTR_T[2])
    assert out["loss_centerness"].item() == pytest.approx(ctr / normaliser, rel=1e-5)
    # the box loss keeps its own normaliser, the sum of centerness targets (>= 1 here)
    box = 2.0 * (GIOU[0] * CTR_T[0] + GIOU[2] * CTR_T[2]) / (CTR_T[0] + CTR_T[2])
    assert out["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)


def test_normaliser_without_any_positive():
    # Two images, no positive: per image 1 + 1 = 2, the batch's total floored at 1.
    labels = [K, K, K]
    cls = focal_sum(LOGITS, labels) + focal_sum(LOGITS[::-1], labels)
    per_image = run_two_images(make_atss(num_pos_norm="per_image"), labels, labels)
    total = run_two_images(make_atss(num_pos_norm="total"), labels, labels)
    assert per_image["loss_cls"].item() == pytest.approx(cls / 2, rel=1e-5)
    assert total["loss_cls"].item() == pytest.approx(cls / 1, rel=1e-5)
    # Both images with positives: the two normalisers agree (1 + 2 = 3).
    for norm in ("per_image", "total"):
        out = run_two_images(make_atss(num_pos_norm=norm), [K, K, 1], [0, K, 1])
        cls = focal_sum(LOGITS, [K, K, 1]) + focal_sum(LOGITS[::-1], [0, K, 1])
        assert out["loss_cls"].item() == pytest.approx(cls / 3, rel=1e-5)


def test_num_pos_norm_names_the_key():
    with pytest.raises(ValueError, match="MODEL.ATSS.NUM_POS_NORM"):
        make_atss(num_pos_norm="per_gpu")
