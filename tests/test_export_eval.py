"""
tools/export_model.py --quantize / --run-eval on a tiny COCO-format dataset: the exported model,
run through the test loader and the COCO evaluator, has PyTorch's AP; the int8 model runs and
returns detections; bad dataset names are errors naming them.

The ground truth of the dataset is the PyTorch model's own best detections (in the original
image's coordinates), so that PyTorch's AP is high and an exported model that decoded, resized
or scaled its boxes differently would lose it.
"""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from tiny_setup import SMALL_MODEL_OPTS, draw_image, load_script, write_png

from atss_d2 import add_atss_config
from atss_d2.data.mapper import ATSSDatasetMapper
from atss_d2.runtime import ExportedModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "Base-ATSS.yaml"
CLASSES = ("a", "b")
DATASET = "export_eval_tiny"
# Images of 72x100 resized to 48x67 for the model (MIN_SIZE_TEST 48): boxes are scaled back.
# fmt: off
OPTS = [
    "MODEL.DEVICE", "cpu",
    *SMALL_MODEL_OPTS,
    "MODEL.ATSS.NUM_CLASSES", len(CLASSES),
    "MODEL.ATSS.PRIOR_PROB", 0.3,
    "INPUT.MIN_SIZE_TEST", 48,
    "INPUT.MAX_SIZE_TEST", 80,
    "DATALOADER.NUM_WORKERS", 0,
]
# fmt: on
GT_PER_IMAGE = 3


def _cfg():
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list([str(x) for x in OPTS])
    return cfg


def _load_tool():
    return load_script("tools/export_model.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(weights file, COCO json, image directory, work dir) of a random model whose head is
    spread out, and a dataset labelled with that model's detections."""
    work = tmp_path_factory.mktemp("export_eval")
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    DetectionCheckpointer(model, save_dir=str(work)).save("weights")

    image_dir = work / "images"
    mapper = ATSSDatasetMapper(cfg, is_train=False)
    images, annotations = [], []
    for i in range(4):
        boxes = [[8 + 5 * i, 10, 40 + 5 * i, 50], [50, 20 + 4 * i, 90, 60 + 2 * i]]
        name = f"img{i}.png"
        write_png(image_dir / name, draw_image(72, 100, boxes, seed=i))
        images.append({"id": i + 1, "file_name": name, "height": 72, "width": 100})
        record = mapper({"file_name": str(image_dir / name), "image_id": i + 1})
        with torch.no_grad():
            found = model([record])[0]["instances"]
        for box, cls in zip(found.pred_boxes.tensor[:GT_PER_IMAGE], found.pred_classes):
            x1, y1, x2, y2 = box.tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    json_file = work / "instances.json"
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    yield work / "weights.pth", json_file, image_dir, work
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)


def _run_tool(setup, out, *flags):
    weights, json_file, image_dir, _ = setup
    tool = _load_tool()
    argv = [
        "--config-file", str(BASE_CONFIG),
        "--output", str(out),
        "--coco-dataset", DATASET, str(json_file), str(image_dir),
        *flags,
        *[str(x) for x in OPTS],
        "MODEL.WEIGHTS", str(weights),
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tool.main(tool.get_parser().parse_args(argv))
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def onnx_run(setup):
    out = setup[3] / "onnx"
    flags = ["--format", "onnx", "--run-eval", DATASET, "--quantize"]
    flags += ["--calib-dataset", DATASET, "--calib-images", "2"]
    code, printed = _run_tool(setup, out, *flags)
    return out, code, printed


def _aps(out):
    results = json.loads((out / "eval.json").read_text())["results"]
    return {name: r["bbox"]["AP"] for name, r in results.items()}


def test_onnx_eval_equals_pytorch(onnx_run):
    out, code, printed = onnx_run
    assert code == 0, printed
    assert "onnx model matches PyTorch" in printed
    aps = _aps(out)
    assert set(aps) == {"pytorch", "onnx", "onnx int8"}
    # The ground truth is PyTorch's own top detections: a high AP, which boxes decoded or
    # scaled differently would not reach.
    assert aps["pytorch"] > 60
    assert abs(aps["onnx"] - aps["pytorch"]) <= 0.1
    assert "COCO box AP" in printed


def test_quantized_model_returns_detections(onnx_run):
    out, _, printed = onnx_run
    assert "Quantized int8 model" in printed
    model = ExportedModel(str(out / "model.int8.onnx"), threads=1)
    image = torch.rand(3, 48, 67, generator=torch.Generator().manual_seed(0)) * 255
    found = model.run(image)
    n = len(found)
    assert 0 < n <= 100
    assert found.pred_boxes.tensor.shape == (n, 4) and found.scores.shape == (n,)
    assert found.pred_classes.shape == (n,) and found.image_size == (48, 67)
    assert int(found.pred_classes.max()) < len(CLASSES)
    assert bool(((found.scores > 0) & (found.scores <= 1)).all())
    # Batched like a detectron2 model: boxes scaled to the requested size.
    (scaled,) = model([{"image": image, "height": 96, "width": 134}])
    assert scaled["instances"].image_size == (96, 134)
    boxes = scaled["instances"].pred_boxes.tensor
    assert torch.allclose(boxes, found.pred_boxes.tensor * 2, atol=1e-3)


def test_torchscript_eval_equals_pytorch(setup):
    out = setup[3] / "torchscript"
    code, printed = _run_tool(setup, out, "--format", "torchscript", "--run-eval", DATASET)
    assert code == 0, printed
    aps = _aps(out)
    assert set(aps) == {"pytorch", "torchscript"}
    assert abs(aps["torchscript"] - aps["pytorch"]) <= 0.1


def test_bad_names_are_errors_naming_them(setup, tmp_path):
    with pytest.raises(ValueError, match="--run-eval names dataset 'no_such_set'"):
        _run_tool(setup, tmp_path, "--run-eval", "no_such_set")
    with pytest.raises(
        ValueError, match=f"--calib-dataset names dataset '{DATASET}x'.*Did you mean '{DATASET}'"
    ):
        _run_tool(setup, tmp_path, "--quantize", "--calib-dataset", DATASET + "x")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExportedModel(str(tmp_path / "missing.onnx"))
