"""Test-time augmentation: coordinates, identity views, flipping, merging."""

import pytest
import torch
from detectron2.layers import batched_nms
from detectron2.modeling import DatasetMapperTTA, build_model
from tiny_setup import small_cfg

from atss_d2.modeling import ATSSWithTTA, merge_detections


def tiny_cfg(*opts):
    # Many detections from a random model: foreground prior 0.3 instead of 0.01.
    return small_cfg("MODEL.ATSS.PRIOR_PROB", 0.3, "TEST.AUG.MAX_SIZE", 1000, *opts)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    # Spread the scores and boxes of the otherwise near-constant random head.
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)


def _plain(model, image, **size):
    with torch.no_grad():
        return model([{"image": image, **size}])[0]["instances"]


def test_single_view_equals_plain_model(model, image):
    cfg = tiny_cfg("TEST.AUG.MIN_SIZES", (64,), "TEST.AUG.FLIP", False)
    plain = _plain(model, image)
    tta = ATSSWithTTA(cfg, model)([{"image": image}])[0]["instances"]
    assert len(plain) > 10
    assert tta.image_size == plain.image_size == (64, 96)
    assert torch.equal(tta.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(tta.scores, plain.scores)
    assert torch.equal(tta.pred_classes, plain.pred_classes)


def test_single_view_of_resized_input_equals_plain_model(model, image):
    # Input as the test loader gives it: resized, with the original size in height/width.
    cfg = tiny_cfg("TEST.AUG.MIN_SIZES", (64,), "TEST.AUG.FLIP", False)
    size = {"height": 128, "width": 192}
    plain = _plain(model, image, **size)
    tta = ATSSWithTTA(cfg, model)([{"image": image, **size}])[0]["instances"]
    assert tta.image_size == plain.image_size == (128, 192)
    assert torch.equal(tta.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(tta.scores, plain.scores)


def test_single_view_box_voting_keeps_boxes(model, image):
    # After NMS at 0.6 no two same-class boxes overlap by IoU >= 0.66: each box votes alone.
    cfg = tiny_cfg(
        "TEST.AUG.MIN_SIZES", (64,), "TEST.AUG.FLIP", False, "MODEL.ATSS.TTA_MERGE", "vote"
    )
    plain = _plain(model, image)
    tta = ATSSWithTTA(cfg, model)([{"image": image}])[0]["instances"]
    assert torch.allclose(tta.pred_boxes.tensor, plain.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(tta.scores, plain.scores)


def test_flip_view_is_mapped_back_by_hand(model, image):
    cfg = tiny_cfg("TEST.AUG.MIN_SIZES", (64,), "TEST.AUG.FLIP", True)
    width = image.shape[-1]
    plain = _plain(model, image)
    flipped = _plain(model, image.flip(-1))
    fb = flipped.pred_boxes.tensor
    # x1' = W - x2, x2' = W - x1; y unchanged.
    unflipped = torch.stack([width - fb[:, 2], fb[:, 1], width - fb[:, 0], fb[:, 3]], dim=1)
    boxes = torch.cat([plain.pred_boxes.tensor, unflipped])
    scores = torch.cat([plain.scores, flipped.scores])
    classes = torch.cat([plain.pred_classes, flipped.pred_classes])
    keep = batched_nms(boxes, scores, classes, 0.6)[: cfg.TEST.DETECTIONS_PER_IMAGE]

    tta = ATSSWithTTA(cfg, model)([{"image": image}])[0]["instances"]
    assert len(tta) == len(keep) > 0
    # Allclose: the two views run as one batch, whose convolutions may round differently.
    assert torch.allclose(tta.pred_boxes.tensor, boxes[keep], atol=1e-3)
    assert torch.allclose(tta.scores, scores[keep], atol=1e-5)
    assert torch.equal(tta.pred_classes, classes[keep])
    # Both views contribute.
    from_flip = (keep >= len(plain)).sum().item()
    assert 0 < from_flip < len(keep)


def test_flip_transform_inverse_by_hand():
    # The convention ATSSWithTTA relies on: a view's transforms invert to original coordinates.
    mapper = DatasetMapperTTA(min_sizes=[32], max_size=1000, flip=True)
    views = mapper({"image": torch.zeros(3, 64, 96, dtype=torch.uint8), "height": 64, "width": 96})
    assert [tuple(v["image"].shape) for v in views] == [(3, 32, 48), (3, 32, 48)]
    box = torch.tensor([[10.0, 5.0, 20.0, 15.0]]).numpy()
    plain_view, flip_view = views
    assert plain_view["transforms"].inverse().apply_box(box).tolist() == [[20, 10, 40, 30]]
    # Flipped view of width 48: x in [48 - 20, 48 - 10] = [28, 38], then x2 scale.
    assert flip_view["transforms"].inverse().apply_box(box).tolist() == [[56, 10, 76, 30]]


def test_multi_scale_flip_in_original_coordinates(model, image):
    cfg = tiny_cfg(
        "TEST.AUG.MIN_SIZES", (48, 64), "TEST.AUG.FLIP", True, "TEST.DETECTIONS_PER_IMAGE", 20
    )
    tta = ATSSWithTTA(cfg, model, batch_size=2)
    outputs = tta([{"image": image, "height": 128, "width": 192}, {"image": image}])
    big, small = outputs[0]["instances"], outputs[1]["instances"]
    assert big.image_size == (128, 192) and small.image_size == (64, 96)
    for inst, (h, w) in ((big, (128, 192)), (small, (64, 96))):
        assert 0 < len(inst) <= 20
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
    # The same image at twice the output size: the same detections, boxes scaled by 2.
    assert torch.allclose(big.pred_boxes.tensor, small.pred_boxes.tensor * 2, atol=1e-3)


def test_merge_detections_nms_and_vote_by_hand():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # kept (class 0)
            [0.0, 0.0, 10.0, 11.0],  # IoU 100/110 with the first: suppressed, votes
            [0.0, 0.0, 10.0, 16.0],  # IoU 0.625: suppressed by NMS (> 0.6), own cluster (< 0.66)
            [0.0, 0.0, 10.0, 12.0],  # class 1: kept, never votes for class 0
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.5, 0.4])
    classes = torch.tensor([0, 0, 0, 1])
    b, s, c = merge_detections(boxes, scores, classes, method="nms")
    assert b.tolist() == [[0, 0, 10, 10], [0, 0, 10, 12]]
    assert s.tolist() == pytest.approx([0.9, 0.4]) and c.tolist() == [0, 1]
    b, s, c = merge_detections(boxes, scores, classes, method="vote")
    # Voting in place of NMS: the cluster {first, second} gives y2 = (0.9 * 10 + 0.6 * 11) / 1.5
    # = 10.4 with score 0.9; the third box stays alone (0.625 < 0.66), as does class 1.
    expected = torch.tensor([[0, 0, 10, 10.4], [0, 0, 10, 16], [0, 0, 10, 12]])
    assert torch.allclose(b, expected)
    assert s.tolist() == pytest.approx([0.9, 0.5, 0.4]) and c.tolist() == [0, 0, 1]
    b, s, c = merge_detections(boxes, scores, classes, method="vote", max_detections=1)
    assert torch.allclose(b, torch.tensor([[0, 0, 10, 10.4]]))
    empty = merge_detections(boxes[:0], scores[:0], classes[:0], method="vote")
    assert [len(x) for x in empty] == [0, 0, 0]
    with pytest.raises(ValueError):
        merge_detections(boxes, scores, classes, method="mean")


def test_rejects_other_models():
    with pytest.raises(TypeError):
        ATSSWithTTA(torch.nn.Linear(2, 2), tta_mapper=None)
