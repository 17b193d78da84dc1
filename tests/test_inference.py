"""
ATSS inference on hand-built predictions (``inference_single_image``) and through
``model.forward`` in eval mode: threshold, per-level top-k, candidate ranking, score mode,
class-aware NMS at 0.6, 100 detections, clipping and scaling to the original image size.
"""

import math

import pytest
import torch
from detectron2.structures import Boxes
from tiny_setup import bare_atss
from torch import nn

from atss_d2.modeling import ATSS

K = 3


def make_atss(**kwargs) -> ATSS:
    """An ATSS whose loss/inference code can be called directly (no backbone or head needed)."""
    return bare_atss(K, **kwargs)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def level(entries):
    """entries: (box, {class: p_cls}, p_ctr). Zero deltas: the predicted box is the anchor."""
    boxes = torch.tensor([e[0] for e in entries], dtype=torch.float32).reshape(-1, 4)
    logits = torch.full((len(entries), K), -20.0)
    for i, (_, probs, _) in enumerate(entries):
        for c, p in probs.items():
            logits[i, c] = logit(p)
    ctr = torch.tensor([[logit(e[2])] for e in entries]).reshape(-1, 1)
    return Boxes(boxes), logits, torch.zeros(len(entries), 4), ctr


def infer(model, levels, image_size=(1000, 1000)):
    anchors, logits, deltas, ctr = zip(*levels)
    return model.inference_single_image(
        list(anchors), list(logits), list(deltas), list(ctr), image_size
    )


def box(i, size=10.0):
    """Disjoint boxes on a row (no NMS interaction)."""
    return [20.0 * i, 0.0, 20.0 * i + size, size]


def as_set(result):
    return {
        (tuple(round(v, 3) for v in b), int(c))
        for b, c in zip(result.pred_boxes.tensor.tolist(), result.pred_classes.tolist())
    }


def test_threshold_is_strict_on_class_probability():
    model = make_atss()  # 0.05
    lv = level(
        [
            (box(0), {0: 0.0499}, 1.0 - 1e-6),  # below: dropped even with centerness ~1
            (box(1), {1: 0.0501}, 0.01),  # above: kept even with low centerness
            (box(2), {2: 0.9}, 0.5),
        ]
    )
    r = infer(model, [lv])
    assert as_set(r) == {(tuple(box(1)), 1), (tuple(box(2)), 2)}
    # exactly at the threshold: p = sigmoid(0) = 0.5 is exact in float32
    model = make_atss(test_score_thresh=0.5)
    anchors = Boxes(torch.tensor([box(0), box(1)]))
    logits = torch.tensor([[0.0, -20.0, -20.0], [1e-3, -20.0, -20.0]])
    r = model.inference_single_image(
        [anchors], [logits], [torch.zeros(2, 4)], [torch.zeros(2, 1)], (100, 100)
    )
    assert r.pred_boxes.tensor.tolist() == [box(1)]


def test_topk_candidates_per_level():
    model = make_atss(test_topk_candidates=2)
    lv0 = level([(box(i), {0: p}, 0.5) for i, p in enumerate([0.6, 0.9, 0.7, 0.8])])
    lv1 = level([(box(10 + i), {1: p}, 0.5) for i, p in enumerate([0.3, 0.95, 0.2])])
    r = infer(model, [lv0, lv1])
    assert as_set(r) == {
        (tuple(box(1)), 0),
        (tuple(box(3)), 0),
        (tuple(box(11)), 1),
        (tuple(box(10)), 1),
    }
    # top-k counts (anchor, class) pairs: one anchor, two classes, k=1 -> the better class
    model = make_atss(test_topk_candidates=1)
    r = infer(model, [level([(box(0), {0: 0.4, 2: 0.7}, 0.5)])])
    assert as_set(r) == {(tuple(box(0)), 2)}


def test_candidate_ranking_cls_vs_cls_ctr():
    entries = [
        (box(0), {0: 0.9}, 0.1),  # p_cls 0.9, p_cls * p_ctr 0.09
        (box(1), {0: 0.6}, 0.9),  # p_cls 0.6, p_cls * p_ctr 0.54
        (box(2), {0: 0.5}, 0.5),  # 0.5, 0.25
    ]
    r = infer(make_atss(test_topk_candidates=1, candidate_ranking="cls"), [level(entries)])
    assert as_set(r) == {(tuple(box(0)), 0)}
    r = infer(make_atss(test_topk_candidates=1, candidate_ranking="cls_ctr"), [level(entries)])
    assert as_set(r) == {(tuple(box(1)), 0)}
    with pytest.raises(ValueError):
        make_atss(candidate_ranking="ctr")


@pytest.mark.parametrize("ranking", ["cls", "cls_ctr"])
def test_topk_matches_a_sort_of_the_pairs_above_threshold(ranking):
    """Many candidates, half of them below the threshold, some with a high p_cls * p_ctr but a
    p_cls under the threshold: the kept pairs are the first k of a plain sort of the pairs whose
    p_cls is above the threshold, whatever the ranking key."""
    g = torch.Generator().manual_seed(0)
    num = 200
    p_cls = torch.rand(num, K, generator=g) * 0.1  # around the 0.05 threshold
    p_ctr = torch.rand(num, 1, generator=g)
    p_ctr[::7] = 0.999  # high p_cls * p_ctr for some pairs below the threshold
    entries = [
        (box(i), {c: float(p_cls[i, c]) for c in range(K)}, float(p_ctr[i])) for i in range(num)
    ]
    k = 50
    model = make_atss(
        test_topk_candidates=k, candidate_ranking=ranking, max_detections_per_image=1000
    )
    r = infer(model, [level(entries)], image_size=(1000, 20 * num))

    def key(pair):
        i, c = pair
        return p_cls[i, c] if ranking == "cls" else p_cls[i, c] * p_ctr[i, 0]

    above = [(i, c) for i in range(num) for c in range(K) if p_cls[i, c] > 0.05]
    assert len(above) > k
    expected = sorted(above, key=key, reverse=True)[:k]
    assert as_set(r) == {(tuple(box(i)), c) for i, c in expected}


def test_score_modes():
    entries = [(box(0), {0: 0.8}, 0.2), (box(1), {2: 0.3}, 0.9)]
    r = infer(make_atss(score_mode="sqrt"), [level(entries)])
    # sorted by score: sqrt(0.27) = 0.52 > sqrt(0.16) = 0.4
    assert r.scores.tolist() == pytest.approx([math.sqrt(0.27), math.sqrt(0.16)], abs=1e-5)
    assert r.pred_classes.tolist() == [2, 0]
    r = infer(make_atss(score_mode="product"), [level(entries)])
    assert r.scores.tolist() == pytest.approx([0.27, 0.16], abs=1e-5)
    with pytest.raises(ValueError):
        make_atss(score_mode="mean")


def test_class_aware_nms_at_06():
    a = [0.0, 0.0, 10.0, 10.0]
    b = [1.0, 0.0, 11.0, 10.0]  # IoU with a: 90/110 = 0.82
    # different classes: both kept
    r = infer(make_atss(), [level([(a, {0: 0.9}, 0.5), (b, {1: 0.8}, 0.5)])])
    assert as_set(r) == {(tuple(a), 0), (tuple(b), 1)}
    # same class: the lower score is suppressed
    r = infer(make_atss(), [level([(a, {0: 0.9}, 0.5), (b, {0: 0.8}, 0.5)])])
    assert as_set(r) == {(tuple(a), 0)}
    # also across levels
    r = infer(make_atss(), [level([(a, {0: 0.7}, 0.5)]), level([(b, {0: 0.8}, 0.5)])])
    assert as_set(r) == {(tuple(b), 0)}
    # the threshold is 0.6: IoU 0.55 keeps both (0.5 would not), IoU 0.65 does not (0.7 would)
    c55 = [0.0, 0.0, 10.0, 5.5]
    c65 = [0.0, 0.0, 10.0, 6.5]
    r = infer(make_atss(), [level([(a, {0: 0.9}, 0.5), (c55, {0: 0.8}, 0.5)])])
    assert len(r) == 2
    r = infer(make_atss(), [level([(a, {0: 0.9}, 0.5), (c65, {0: 0.8}, 0.5)])])
    assert as_set(r) == {(tuple(a), 0)}


def test_at_most_100_detections_best_first():
    probs = [0.06 + 0.9 * i / 150 for i in range(150)]
    entries = [(box(i), {i % K: p}, 0.5) for i, p in enumerate(probs)]
    r = infer(make_atss(), [level(entries)], image_size=(100, 4000))
    assert len(r) == 100
    expected = sorted((math.sqrt(p * 0.5) for p in probs), reverse=True)[:100]
    assert r.scores.tolist() == pytest.approx(expected, abs=1e-5)
    r = infer(make_atss(max_detections_per_image=7), [level(entries)], image_size=(100, 4000))
    assert len(r) == 7


def test_boxes_clipped_to_image_and_empty_ones_dropped():
    entries = [
        ([-5.0, -5.0, 15.0, 15.0], {0: 0.9}, 0.5),  # sticks out -> [0, 0, 12, 10]
        ([20.0, 20.0, 30.0, 30.0], {1: 0.9}, 0.5),  # outside -> zero area, dropped
        ([2.0, 2.0, 8.0, 40.0], {2: 0.9}, 0.5),  # bottom clipped -> [2, 2, 8, 10]
    ]
    r = infer(make_atss(), [level(entries)], image_size=(10, 12))  # (h, w)
    assert as_set(r) == {((0.0, 0.0, 12.0, 10.0), 0), ((2.0, 2.0, 8.0, 10.0), 2)}
    assert r.image_size == (10, 12)


def test_decoded_boxes_use_the_deltas():
    # dx = 1 (x 1/10 of the width), dw = 5 ln 2 (width x 2): [0, 0, 10, 10] -> [-4, 0, 16, 10]
    model = make_atss()
    anchors = Boxes(torch.tensor([[10.0, 10.0, 20.0, 20.0]]))
    deltas = torch.tensor([[1.0, 0.0, 5 * math.log(2.0), 0.0]])
    r = model.inference_single_image(
        [anchors], [torch.tensor([[2.0, -9.0, -9.0]])], [deltas], [torch.zeros(1, 1)], (50, 50)
    )
    assert r.pred_boxes.tensor.tolist()[0] == pytest.approx([6.0, 10.0, 26.0, 20.0], abs=1e-5)


def test_no_detection():
    r = infer(make_atss(), [level([(box(0), {0: 0.01}, 0.5)])])
    assert len(r) == 0 and r.pred_boxes.tensor.shape == (0, 4)


# ------------------------------------------------------------------------------------------
# model.forward in eval mode
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    from detectron2.modeling import build_model
    from tiny_setup import small_cfg

    cfg = small_cfg(num_classes=K)
    torch.manual_seed(0)
    model = build_model(cfg)
    # p_cls ~ 0.5 everywhere (instead of the 0.01 prior) so that there are detections
    nn.init.constant_(model.head.cls_score.bias, 0.0)
    model.eval()
    return model


def test_forward_eval_scales_to_original_size(small_model):
    g = torch.Generator().manual_seed(0)
    img0 = torch.rand(3, 64, 96, generator=g) * 255
    img1 = torch.rand(3, 48, 40, generator=g) * 255
    with torch.no_grad():
        plain = small_model([{"image": img0}, {"image": img1}])
        scaled = small_model(
            [
                {"image": img0, "height": 128, "width": 192},
                {"image": img1, "height": 72, "width": 60},
            ]
        )
    for p, s, (h, w), (oh, ow) in zip(plain, scaled, [(64, 96), (48, 40)], [(128, 192), (72, 60)]):
        p, s = p["instances"], s["instances"]
        assert p.image_size == (h, w) and s.image_size == (oh, ow)
        assert 0 < len(p) <= 100 and len(s) == len(p)
        pb = p.pred_boxes.tensor
        # inside the (resized) image, non-empty
        assert (pb[:, 0] >= 0).all() and (pb[:, 1] >= 0).all()
        assert (pb[:, 2] <= w).all() and (pb[:, 3] <= h).all()
        assert ((pb[:, 2] > pb[:, 0]) & (pb[:, 3] > pb[:, 1])).all()
        # the same detections, boxes scaled by original / resized size
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
        assert torch.allclose(s.pred_boxes.tensor, pb * scale, atol=1e-3)
        assert torch.equal(s.scores, p.scores) and torch.equal(s.pred_classes, p.pred_classes)
        assert (p.scores[:-1] >= p.scores[1:]).all()
        # sqrt(p_cls * p_ctr) lies in (0, 1]
        assert (p.scores > 0).all() and (p.scores <= 1).all()
