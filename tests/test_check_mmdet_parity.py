"""tools/check_mmdet_parity.py without mmdetection: the batches it builds, the model settings it
gives mmdetection against atss_d2's config, its comparison arithmetic, and its exit without
mmdetection."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from tiny_setup import load_script

from atss_d2 import add_atss_config

REPO = Path(__file__).resolve().parents[1]


tool = load_script("tools/check_mmdet_parity.py")


def test_batches_have_the_sizes_and_ground_truth_described():
    loss_cases, detection_cases = tool.build_cases(seed=0)
    shapes = {c["name"]: [tuple(x["image"].shape) for x in c["images"]] for c in loss_cases}
    assert shapes == {
        "same size": [(3, 512, 640), (3, 512, 640)],
        "mixed sizes": [(3, 512, 640), (3, 384, 480)],
        "without GT": [(3, 512, 640), (3, 512, 640)],
    }
    num_gt = {c["name"]: [len(x["boxes"]) for x in c["images"]] for c in loss_cases}
    assert num_gt == {"same size": [8, 8], "mixed sizes": [8, 8], "without GT": [8, 0]}
    for case in loss_cases:
        for x in case["images"]:
            h, w = x["image"].shape[1:]
            boxes = x["boxes"]
            assert x["image"].dtype == torch.uint8
            assert boxes.shape == (len(x["labels"]), 4)
            assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
            assert bool((boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all())
            assert bool((boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all())
            assert set(x["labels"].tolist()) <= {0, 1, 2}
    assert [tuple(c["images"][0]["image"].shape[1:]) for c in detection_cases] == [
        (512, 640),
        (375, 500),
        (800, 1088),
    ]
    # The two images of a batch differ, and the same seed gives the same inputs.
    same = loss_cases[0]["images"]
    assert not torch.equal(same[0]["image"], same[1]["image"])
    again, _ = tool.build_cases(seed=0)
    assert torch.equal(again[1]["images"][1]["image"], loss_cases[1]["images"][1]["image"])


def test_mmdet_model_settings_agree_with_the_atss_d2_config():
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(REPO / tool.CONFIG))
    mm = tool.mmdet_model_config()
    pre, head, test = mm["data_preprocessor"], mm["bbox_head"], mm["test_cfg"]
    assert pre["mean"] == list(cfg.MODEL.PIXEL_MEAN) and pre["std"] == list(cfg.MODEL.PIXEL_STD)
    assert pre["bgr_to_rgb"] and cfg.INPUT.FORMAT == "RGB"
    assert pre["pad_size_divisor"] == cfg.MODEL.ATSS.SIZE_DIVISIBILITY
    gen = head["anchor_generator"]
    sizes = [[gen["octave_base_scale"] * s] for s in gen["strides"]]
    assert sizes == [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    stds = head["bbox_coder"]["target_stds"]
    assert [1 / s for s in stds] == pytest.approx(list(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS))
    assert head["loss_bbox"]["loss_weight"] == cfg.MODEL.ATSS.REG_LOSS_WEIGHT
    assert mm["train_cfg"]["assigner"]["topk"] == cfg.MODEL.ATSS.TOPK
    assert test["score_thr"] == cfg.MODEL.ATSS.SCORE_THRESH_TEST
    assert test["nms_pre"] == cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST
    assert test["nms"]["iou_threshold"] == cfg.MODEL.ATSS.NMS_THRESH_TEST
    assert test["max_per_img"] == cfg.TEST.DETECTIONS_PER_IMAGE
    assert head["num_classes"] == tool.NUM_CLASSES


def test_relative_differences_are_computed_as_documented():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [10.0, 10.0, 20.0, 20.0]])
    mm = {
        "losses": {"b": {"loss_cls": 2.0, "loss_bbox": 1.0, "loss_centerness": 0.0}},
        "detections": {
            "detections d": {
                "boxes": boxes,
                "scores": torch.tensor([0.5, 0.25]),
                "labels": torch.tensor([0, 2]),
            }
        },
    }
    ours = {
        "losses": {"b": {"loss_cls": 2.0002, "loss_box_reg": 1.0, "loss_centerness": 0.0}},
        "detections": {
            "detections d": {
                "boxes": boxes + torch.tensor([[0.0, 0.0, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]]),
                "scores": torch.tensor([0.5, 0.25]),
                "labels": torch.tensor([0, 1]),
            }
        },
    }
    # Candidates come level by level from mmdetection, by score from atss_d2: compared by rank.
    mm["detections"]["candidates c"] = {
        k: v.flip(0) for k, v in mm["detections"]["detections d"].items()
    }
    ours["detections"]["candidates c"] = {
        k: v.clone() for k, v in mm["detections"]["detections d"].items()
    }
    rel = {(r["case"], r["quantity"]): r["rel"] for r in tool.compare(mm, ours)}
    assert all(rel[("candidates c", q)] == 0.0 for q in ("count", "boxes (sum)", "labels (sum)"))
    assert rel[("b", "loss_cls")] == pytest.approx(1e-4)
    assert rel[("b", "loss_bbox")] == 0.0 and rel[("b", "loss_centerness")] == 0.0
    assert rel[("detections d", "count")] == 0.0
    assert rel[("detections d", "boxes (sum)")] == 0.25 / 100
    assert rel[("detections d", "scores (sum)")] == 0.0
    assert rel[("detections d", "labels (sum)")] == 0.5
    assert tool.relative(0.0, 1e-9) == math.inf
    assert tool.relative(4, 3) == 0.25


@pytest.mark.skipif(importlib.util.find_spec("mmdet") is not None, reason="mmdet is installed")
def test_without_mmdet_it_names_the_install_commands(capsys):
    assert tool.main([]) == 2
    err = capsys.readouterr().err
    assert "mmdet is not importable" in err
    assert "pip install --target /tmp/mmpkgs --no-deps mmengine==0.10.7 mmdet==3.3.0" in err
    assert "--mmdet-python" in err
