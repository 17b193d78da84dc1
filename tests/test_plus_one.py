"""
The authors' "+1" world (MODEL.ATSS.LEGACY_PLUS_ONE): IoUs with widths x2 - x1 + 1 in the sample
selection and in NMS, as maskrcnn-benchmark's boxlist_iou and nms compute them. Expected values
worked out by hand from those formulas.
"""

import statistics

import pytest
import torch
from detectron2.structures import Boxes
from tiny_setup import small_cfg

from atss_d2.modeling import ATSSMatcher
from atss_d2.modeling.atss import class_aware_nms
from atss_d2.modeling.matcher import candidate_ious

A = torch.tensor([0.0, 0.0, 4.0, 4.0])
B = torch.tensor([1.2, 0.0, 5.2, 4.0])


def test_candidate_ious_plus_one():
    # plain: overlap 2.8 x 4 = 11.2, union 16 + 16 - 11.2; "+1": 3.8 x 5 = 19, union 25 + 25 - 19
    assert candidate_ious(A, B).item() == pytest.approx(11.2 / 20.8)
    assert candidate_ious(A, B, plus_one=True).item() == pytest.approx(19 / 31)


def test_nms_plus_one_suppresses_what_plain_nms_keeps():
    boxes, scores, classes = torch.stack([A, B]), torch.tensor([0.9, 0.8]), torch.tensor([0, 0])
    # IoU 0.538 (plain) and 0.613 ("+1") against the threshold 0.6.
    assert class_aware_nms(boxes, scores, classes, 0.6).tolist() == [0, 1]
    assert class_aware_nms(boxes, scores, classes, 0.6, plus_one=True).tolist() == [0]
    # Other classes never suppress each other.
    other = torch.tensor([0, 1])
    assert class_aware_nms(boxes, scores, other, 0.6, plus_one=True).tolist() == [0, 1]


def test_selection_threshold_from_plus_one_ious():
    anchors = [Boxes(torch.tensor([[0.0, 0, 8, 8], [4, 0, 12, 8], [8, 0, 16, 8]]))]
    gt = Boxes(torch.tensor([[2.0, 0, 10, 8]]))
    # "+1" IoUs: overlaps 7 x 9, 7 x 9, 3 x 9 of two 9 x 9 boxes; plain: 6 x 8, 6 x 8, 2 x 8
    # of two 8 x 8 boxes. Threshold: mean + sample standard deviation.
    plus_one = [63 / 99, 63 / 99, 27 / 135]
    plain = [48 / 80, 48 / 80, 16 / 112]
    for flag, ious in ((True, plus_one), (False, plain)):
        result = ATSSMatcher(topk=3, plus_one=flag).match(anchors, gt)
        expected = statistics.mean(ious) + statistics.stdev(ious)
        assert result.thresholds.item() == pytest.approx(expected, rel=1e-6), flag
        # Positives: IoU >= threshold and centre inside: none here for either (max IoU below).
        assert result.matches.tolist() == [-1, -1, -1]


def test_the_legacy_switch_reaches_matcher_and_mapper():
    from detectron2.modeling import build_model

    from atss_d2.data.mapper import ATSSDatasetMapper

    cfg = small_cfg("MODEL.ATSS.LEGACY_PLUS_ONE", "True")
    model = build_model(cfg)
    assert model.matcher.plus_one and model.legacy_plus_one
    assert ATSSDatasetMapper(cfg, is_train=True).plus_one
    assert not build_model(small_cfg()).matcher.plus_one
    assert not ATSSDatasetMapper(small_cfg(), is_train=True).plus_one


def test_ground_truth_loaded_with_plus_one():
    from atss_d2.data.mapper import ATSSDatasetMapper

    xywh = torch.tensor([[10.0, 20, 30, 40], [50, 50, 1, 10]]).numpy()
    modes = torch.tensor([1, 1]).numpy()  # BoxMode.XYWH_ABS
    # x2 = x + w - 1, y2 = y + h - 1 (the authors'); x + w, y + h (detectron2, mmdetection).
    assert ATSSDatasetMapper._to_xyxy(xywh, modes, plus_one=True).tolist()[0] == [10, 20, 39, 59]
    assert ATSSDatasetMapper._to_xyxy(xywh, modes).tolist()[0] == [10, 20, 40, 60]
    # A box one pixel wide ends where it starts: no width.
    assert ATSSDatasetMapper._to_xyxy(xywh, modes, plus_one=True).tolist()[1] == [50, 50, 50, 59]


def test_detections_written_with_plus_one(tmp_path):
    from detectron2.structures import Instances
    from tiny_setup import image_dicts, write_coco_json

    from atss_d2.data import register_coco_dataset
    from atss_d2.evaluation import ATSSCOCOEvaluator

    dicts = image_dicts(tmp_path / "images", num_images=1)
    register_coco_dataset("plus_one_eval", write_coco_json(tmp_path / "a.json", dicts),
                          str(tmp_path / "images"))  # fmt: skip
    instances = Instances((64, 80))
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 39.0, 59.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([0])
    written = {}
    for flag in (True, False):
        evaluator = ATSSCOCOEvaluator("plus_one_eval", output_dir=str(tmp_path), plus_one=flag)
        evaluator.reset()
        evaluator.process([{"image_id": 0}], [{"instances": instances}])
        written[flag] = evaluator._predictions[0]["instances"][0]["bbox"]
    # w = x2 - x1 + 1 (the authors' results) or x2 - x1.
    assert written[True] == pytest.approx([10, 20, 30, 40])
    assert written[False] == pytest.approx([10, 20, 29, 39])
