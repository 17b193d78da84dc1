"""TorchScript and ONNX export: the exported model gives PyTorch's detections on new images."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tiny_setup import SMALL_MODEL_OPTS

from atss_d2 import add_atss_config
from atss_d2.export import export_onnx, instances_from_outputs

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "Base-ATSS.yaml"
OUTPUT_NAMES = ["pred_boxes", "pred_classes", "scores", "image_size"]
# The models are traced on images of at most 64x64 (padded), whose P3 has at most 8 * 8 * 3 = 192
# candidates, under the top-k cap of 300; the test images have more (16 * 20 * 3 = 960 at most).
# The cap must not have been traced as "keep all".
# fmt: off
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    *SMALL_MODEL_OPTS,
    "MODEL.ATSS.NUM_CLASSES", 3,
    "MODEL.ATSS.PRIOR_PROB", 0.3,
    "MODEL.ATSS.TOPK_CANDIDATES_TEST", 300,
]
# fmt: on


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list(TINY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Spread the scores and boxes of the otherwise near-constant random head.
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def tool_export(model, tmp_path_factory):
    """tools/export_model.py run (in this process) on ``model``'s weights, TorchScript format,
    a synthetic 40x53 sample image; returns (output dir, exit code, printed text)."""
    out = tmp_path_factory.mktemp("export")
    DetectionCheckpointer(model, save_dir=str(out)).save("weights")
    spec = importlib.util.spec_from_file_location("export_model", ROOT / "tools/export_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = [
        "--config-file", str(BASE_CONFIG),
        "--format", "torchscript",
        "--output", str(out),
        *[str(x) for x in TINY_OPTS],
        "MODEL.WEIGHTS", str(out / "weights.pth"),
        "INPUT.MIN_SIZE_TEST", "40",
        "INPUT.MAX_SIZE_TEST", "56",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tool.main(tool.get_parser().parse_args(argv))
    return out, code, printed.getvalue()


def _images():
    """Tensors (3, H, W) of other sizes and contents than the tracing samples."""
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 128, 160, generator=g) * 255, torch.rand(3, 96, 128, generator=g) * 255]


def _assert_same_detections(expected, actual):
    assert actual.image_size == expected.image_size
    assert len(actual) == len(expected) > 0
    assert torch.allclose(actual.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(actual.scores, expected.scores, atol=1e-5)
    assert torch.equal(actual.pred_classes.long(), expected.pred_classes)


def _pytorch(model, image):
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def test_export_tool(tool_export):
    out, code, printed = tool_export
    assert code == 0
    assert "torchscript model matches PyTorch" in printed
    assert json.loads((out / "outputs.json").read_text())["outputs"] == OUTPUT_NAMES


def test_torchscript_matches_pytorch_on_new_images(model, tool_export):
    out, _, _ = tool_export
    traced = torch.jit.load(str(out / "model.ts"))
    for image in _images():
        # No profiling-executor re-optimization for every new shape (seconds each).
        with torch.no_grad(), torch.jit.optimized_execution(False):
            outputs = traced(image)
        _assert_same_detections(
            _pytorch(model, image), instances_from_outputs(OUTPUT_NAMES, outputs)
        )


def test_onnx_matches_pytorch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    trace_image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(4)) * 255
    path = str(tmp_path / "model.onnx")
    names = export_onnx(model, trace_image, path)
    assert names == OUTPUT_NAMES
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    for image in [trace_image, *_images()]:
        outputs = session.run(None, {"image": image.numpy()})
        _assert_same_detections(_pytorch(model, image), instances_from_outputs(names, outputs))


def test_onnx_refuses_deformable_convs(tmp_path):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list(TINY_OPTS + ["MODEL.ATSS.DCN_IN_TOWER", True])
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="torchscript"):
        export_onnx(model, torch.rand(3, 40, 56) * 255, str(tmp_path / "model.onnx"))
