"""
The evaluator follows the dataset (``evaluator_type``), and Pascal VOC AP computed by hand.
"""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from tiny_setup import image_dicts, registered, tiny_cfg

from atss_d2.engine import ATSSTrainer, ConfigError
from atss_d2.evaluation import (
    ATSSCOCOEvaluator,
    ATSSPascalVOCEvaluator,
    voc_average_precision,
    voc_class_ap,
)


def _voc_devkit(root, objects_per_image):
    """A VOC devkit folder (Annotations/, ImageSets/Main/test.txt) with the given objects:
    image id -> [(name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)]."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image, objects in objects_per_image.items():
        body = "".join(
            f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
            f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objects
        )
        (root / "Annotations" / f"{image}.xml").write_text(
            f"<annotation><filename>{image}.jpg</filename><size><width>100</width>"
            f"<height>80</height><depth>3</depth></size>{body}</annotation>"
        )
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(objects_per_image) + "\n")


def _outputs(boxes, scores, classes):
    instances = Instances((80, 100))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return [{"instances": instances}]


def test_average_precision_by_hand():
    # Two positives; detections by score: TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # Area under the precision envelope (1 up to recall .5, 2/3 up to 1): .5 + .5 * 2/3.
    assert voc_average_precision(recall, precision, use_07_metric=False) == pytest.approx(5 / 6)
    # 11 points: precision 1 at recall >= 0 ... .5 (6 points), 2/3 at .6 ... 1 (5 points).
    expected_07 = (6 * 1 + 5 * 2 / 3) / 11
    assert voc_average_precision(recall, precision, use_07_metric=True) == pytest.approx(
        expected_07
    )

    gt = {"a": [([11, 21, 50, 60], False)], "b": [([5, 5, 30, 30], False), ([60, 5, 90, 40], True)]}
    detections = [
        ("a", 0.9, [11, 21, 50, 60]),  # TP
        ("b", 0.85, [60, 5, 90, 40]),  # on the difficult box: ignored
        ("b", 0.8, [70, 60, 95, 78]),  # FP
        ("b", 0.7, [5, 5, 30, 30]),  # TP
        ("a", 0.6, [11, 21, 50, 60]),  # duplicate of a matched box: FP
    ]
    # Without the difficult one: TP FP TP FP -> precision 1 .5 2/3 .5 at recall .5 .5 1 1.
    assert voc_class_ap(detections, gt, 0.5, use_07_metric=False) == pytest.approx(5 / 6)


def test_voc_evaluator_on_a_devkit_folder(tmp_path):
    _voc_devkit(
        tmp_path,
        {
            "a": [("cat", (11, 21, 50, 60), False)],
            "b": [("cat", (6, 6, 31, 31), False)],
        },
    )
    name = "voc_eval_devkit"
    MetadataCatalog.get(name).set(
        thing_classes=["cat"], dirname=str(tmp_path), split="test", year=2012,
        evaluator_type="pascal_voc",
    )  # fmt: skip
    try:
        evaluator = ATSSTrainer.build_evaluator(tiny_cfg(tmp_path), name)
        assert isinstance(evaluator, ATSSPascalVOCEvaluator)
        evaluator.reset()
        # 0-based predictions (the loader's convention: VOC xmin/ymin minus 1) of both boxes.
        evaluator.process([{"image_id": "a"}], _outputs([[10, 20, 50, 60]], [0.9], [0]))
        evaluator.process([{"image_id": "b"}], _outputs([[5, 5, 31, 31]], [0.8], [0]))
        assert evaluator.evaluate()["bbox"] == pytest.approx({"AP": 100, "AP50": 100, "AP75": 100})
        # A false positive ranked first on "b": 1 of 2 at recall .5 in front, both at recall 1.
        evaluator.reset()
        evaluator.process([{"image_id": "a"}], _outputs([[10, 20, 50, 60]], [0.7], [0]))
        evaluator.process(
            [{"image_id": "b"}], _outputs([[60, 40, 99, 79], [5, 5, 31, 31]], [0.9, 0.6], [0, 0])
        )
        # FP TP TP: precision 0 1/2 2/3 at recall 0 .5 1 -> area .5 * 2/3 + .5 * 2/3.
        assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    finally:
        MetadataCatalog.remove(name)


def test_evaluator_type_chooses_the_evaluator(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    with registered("eval_coco_like", image_dicts(tmp_path / "img")) as name:
        assert isinstance(ATSSTrainer.build_evaluator(cfg, name), ATSSCOCOEvaluator)
        MetadataCatalog.get(name).set(evaluator_type="coco")
        assert isinstance(ATSSTrainer.build_evaluator(cfg, name), ATSSCOCOEvaluator)
    with registered("eval_lvis_like", [], evaluator_type="lvis") as name:
        monkeypatch.setitem(__import__("sys").modules, "lvis", None)  # as if not installed
        with pytest.raises(ConfigError, match="eval_lvis_like.*pip install lvis"):
            ATSSTrainer.build_evaluator(cfg, name)
    with registered("eval_sem_seg", [], evaluator_type="sem_seg") as name:
        with pytest.raises(ConfigError, match="eval_sem_seg.*'sem_seg'.*'coco', 'pascal_voc'"):
            ATSSTrainer.build_evaluator(cfg, name)
