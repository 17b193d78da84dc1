"""
COCO evaluation of a model with zero detections and of a dataset holding an image without
annotations: numbers (AP 0), not NaN or a crash; perfect detections still give AP 100.
"""

import json
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from tiny_setup import image_dicts, one_torch_thread, registered, tiny_cfg, write_coco_json

from atss_d2.engine import ATSSTrainer
from atss_d2.evaluation import ATSSCOCOEvaluator


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    d = image_dicts(tmp_path_factory.mktemp("eval_images"), num_images=3)
    d[2]["annotations"] = []  # an image without annotations
    return d


@pytest.fixture(scope="module")
def json_dataset(dicts, tmp_path_factory):
    """The same images as a COCO json (category ids 1, 2), registered the usual way."""
    root = tmp_path_factory.mktemp("eval_json")
    json_file = write_coco_json(root / "val.json", dicts)
    image_root = str(root.parent / dicts[0]["file_name"].split("/")[-2])
    register_coco_instances("eval_json", {}, json_file, image_root)
    DatasetCatalog.get("eval_json")  # loading sets thing_classes and the id mapping
    yield "eval_json"
    DatasetCatalog.remove("eval_json")
    MetadataCatalog.remove("eval_json")


def predictions(dicts, perfect: bool):
    """(inputs, outputs) for ``process``: the GT boxes as detections, or no detection."""
    inputs, outputs = [], []
    for d in dicts:
        inst = Instances((d["height"], d["width"]))
        annos = d["annotations"] if perfect else []
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in annos]).reshape(-1, 4).float())
        inst.scores = torch.full((len(annos),), 0.9)
        inst.pred_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.long)
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def evaluate(evaluator, dicts, perfect):
    evaluator.reset()
    evaluator.process(*predictions(dicts, perfect))
    return evaluator.evaluate()["bbox"]


def test_zero_detections_give_zero_ap(dicts, json_dataset, tmp_path):
    with registered("eval_dicts", dicts) as dict_dataset:
        for name in (dict_dataset, json_dataset):
            res = evaluate(ATSSCOCOEvaluator(name, output_dir=str(tmp_path / name)), dicts, False)
            for key in ("AP", "AP50", "AP75", "APs", "AP-square", "AP-disc"):
                assert res[key] == 0.0, (name, key, res)
            # All GT boxes are small (< 32 x 32): medium and large AP stay undefined.
            assert math.isnan(res["APm"]) and math.isnan(res["APl"])

            # detectron2's own evaluator reports NaN here.
            plain = COCOEvaluator(name, output_dir=str(tmp_path / name), use_fast_impl=False)
            assert math.isnan(evaluate(plain, dicts, False)["AP"])


def test_perfect_detections_give_full_ap(dicts, json_dataset, tmp_path):
    res = evaluate(ATSSCOCOEvaluator(json_dataset, output_dir=str(tmp_path)), dicts, True)
    assert res["AP"] == pytest.approx(100.0) and res["AP-disc"] == pytest.approx(100.0)
    # Half the detections: recall 1/2 for "square" boxes.
    half = [dict(d, annotations=d["annotations"][:1] if i else []) for i, d in enumerate(dicts)]
    evaluator = ATSSCOCOEvaluator(json_dataset, output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process(*predictions(half, True))
    assert 0 < evaluator.evaluate()["bbox"]["AP"] < 100


def test_trainer_test_with_a_model_that_detects_nothing(dicts, tmp_path):
    with registered("eval_trainer", dicts) as name:
        cfg = tiny_cfg(
            tmp_path, "DATASETS.TEST", f"('{name}',)", "MODEL.ATSS.SCORE_THRESH_TEST", "1.0"
        )
        model = build_model(cfg)
        results = ATSSTrainer.test(cfg, model)
    bbox = results["bbox"]  # DefaultTrainer.test unwraps the results of a single dataset
    assert bbox["AP"] == 0.0 and bbox["AP50"] == 0.0
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        assert json.load(f) == []  # really no detection (class probabilities are < 1)
