"""
COCO evaluation of ground truth that pycocotools would misjudge, and of datasets whose
annotations change: perfect detections (the ground truth itself) must score AP 100, and
detections that no longer fit edited annotations must not.
"""

import json
import logging

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from tiny_setup import image_dicts, registered, tiny_cfg, write_coco_json

from atss_d2.data import register_coco_dataset
from atss_d2.engine import ATSSTrainer
from atss_d2.evaluation import ATSSCOCOEvaluator, repair_coco_ground_truth


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    return image_dicts(tmp_path_factory.mktemp("gt_images"), num_images=3)


def _perfect(dicts):
    """(inputs, outputs) for ``process``: every ground-truth box detected, score 0.9."""
    inputs, outputs = [], []
    for d in dicts:
        inst = Instances((d["height"], d["width"]))
        boxes = [
            BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            for a in d["annotations"]
        ]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.full((len(boxes),), 0.9)
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def _ap(evaluator, dicts):
    evaluator.reset()
    evaluator.process(*_perfect(dicts))
    return evaluator.evaluate()["bbox"]["AP"]


def _json_dataset(tmp_path, dicts, edit):
    """``dicts`` as a COCO json edited by ``edit(data)``, registered; returns its name."""
    path = write_coco_json(tmp_path / "val.json", dicts)
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    name = f"gt_{tmp_path.name}"
    image_root = str(tmp_path.parent / dicts[0]["file_name"].split("/")[-2])
    register_coco_dataset(name, path, image_root)
    return name


def _ids_from_zero(data):
    for i, ann in enumerate(data["annotations"]):
        ann["id"] = i  # Label Studio's COCO export numbers annotations from 0


def _without(*keys):
    def edit(data):
        for ann in data["annotations"]:
            for key in keys:
                del ann[key]

    return edit


@pytest.mark.parametrize(
    "edit", [_ids_from_zero, _without("area"), _without("iscrowd"), _without("area", "iscrowd")]
)
def test_perfect_detections_score_100_on_json_that_pycocotools_misjudges(dicts, tmp_path, edit):
    name = _json_dataset(tmp_path, dicts, edit)
    try:
        evaluator = ATSSCOCOEvaluator(name, output_dir=str(tmp_path / "eval"))
        assert _ap(evaluator, dicts) == pytest.approx(100.0)
        if edit is _ids_from_zero:
            # detectron2's evaluator on the same json: the box with id 0 counts as missed.
            plain = COCOEvaluator(name, output_dir=str(tmp_path / "plain"), use_fast_impl=False)
            assert _ap(plain, dicts) < 100.0
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_repair_says_what_it_changed():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 5, "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 0, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 7.0},
        ],
    }
    changes = repair_coco_ground_truth(coco)
    assert len(changes) == 3
    assert [a["id"] for a in coco.dataset["annotations"]] == [1, 2]
    assert [a["iscrowd"] for a in coco.dataset["annotations"]] == [0, 0]
    # Width x height for the missing area; the given one is kept.
    assert [a["area"] for a in coco.dataset["annotations"]] == [12.0, 7.0]
    assert sorted(coco.anns) == [1, 2]  # the index follows the new ids
    # A ground truth as the COCO format defines it is left as it is.
    assert repair_coco_ground_truth(coco) == []


def test_edited_annotations_are_evaluated_as_they_are_now(dicts, tmp_path):
    """A dataset without a json (VOC folders, dicts) is converted for COCO evaluation; the
    conversion of the old annotations must not be reused after they change."""
    out = str(tmp_path / "eval")
    with registered("gt_edited", dicts):
        assert _ap(ATSSCOCOEvaluator("gt_edited", output_dir=out), dicts) == pytest.approx(100.0)
    moved = [
        dict(d, annotations=[dict(a, bbox=[x + 20 for x in a["bbox"]]) for a in d["annotations"]])
        for d in dicts
    ]
    with registered("gt_edited", moved):
        # The detections of the old boxes (IoU < 0.5 with every moved box) find nothing now.
        assert _ap(ATSSCOCOEvaluator("gt_edited", output_dir=out), dicts) == 0.0
        assert _ap(ATSSCOCOEvaluator("gt_edited", output_dir=out), moved) == pytest.approx(100.0)


def _crowded_image(tmp_path, num_objects):
    """One 200x200 image with ``num_objects`` disjoint 6x6 boxes of class 0."""
    (d,) = image_dicts(tmp_path, num_images=1, size=(200, 200))
    d["annotations"] = [
        {"bbox": [x, y, x + 6, y + 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
        for y in range(2, 194, 8)
        for x in range(2, 194, 8)
    ][:num_objects]
    assert len(d["annotations"]) == num_objects
    return [d]


def test_more_objects_than_evaluated_detections(tmp_path, caplog):
    crowded = _crowded_image(tmp_path, 150)
    with registered("gt_crowded", crowded):
        # Default TEST.DETECTIONS_PER_IMAGE 100: COCO's 100 detections, 100 of 150 found at
        # best; the warning says why.
        cfg = tiny_cfg(tmp_path / "a")
        with caplog.at_level(logging.WARNING):
            evaluator = ATSSTrainer.build_evaluator(cfg, "gt_crowded")
        assert "1 images of gt_crowded have more objects than the 100 detections" in caplog.text
        assert "up to 150" in caplog.text and "TEST.DETECTIONS_PER_IMAGE" in caplog.text
        assert _ap(evaluator, crowded) < 100.0

        # A model that keeps 200 detections is evaluated on 200.
        caplog.clear()
        cfg = tiny_cfg(tmp_path / "b", "TEST.DETECTIONS_PER_IMAGE", "200")
        with caplog.at_level(logging.WARNING):
            evaluator = ATSSTrainer.build_evaluator(cfg, "gt_crowded")
        assert "more objects than" not in caplog.text
        assert _ap(evaluator, crowded) == pytest.approx(100.0)
