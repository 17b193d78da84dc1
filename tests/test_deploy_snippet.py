"""
docs/DEPLOY.md's stand-alone ONNX Runtime snippet, run as written on the files
tools/export_model.py writes: on images of other sizes and aspect ratios than the trace image,
grayscale and RGBA, it gives the detections of the PyTorch model run through detectron2's test
pipeline (read, ResizeShortestEdge, ``detector_postprocess`` to the original size), for a model
with 3 classes, on RGB and BGR input, with ``MODEL.ATSS.LEGACY_PLUS_ONE``, and for one that
finds nothing.
"""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image
from tiny_setup import REPO, SMALL_MODEL_OPTS, draw_image, load_script, small_cfg

from atss_d2.data.mapper import read_image_any_mode

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CLASSES = ["cat", "dog", "bird"]
OPTS = [
    "MODEL.ATSS.PRIOR_PROB", 0.3,
    "INPUT.MIN_SIZE_TEST", 48,
    "INPUT.MAX_SIZE_TEST", 80,
]  # fmt: skip


def _snippet() -> str:
    """The python block of docs/DEPLOY.md that reads exported/outputs.json."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if 'json.load(open("exported/outputs.json"))' in b]
    return block


def _export(work: Path, *extra):
    """A random 3-class model (head spread so that it detects), saved with class names and
    exported to ``work/exported`` by tools/export_model.py; returns (cfg, model, printed)."""
    cfg = small_cfg(*OPTS, *extra, num_classes=len(CLASSES))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    DetectionCheckpointer(model, save_dir=str(work)).save("weights", thing_classes=CLASSES)
    tool = load_script("tools/export_model.py")
    argv = [
        "--config-file", str(REPO / "configs" / "Base-ATSS.yaml"),
        "--output", str(work / "exported"),
        "--sample-image", _write(work / "sample.png", 40, 56, seed=9),
        "MODEL.DEVICE", "cpu",
        *SMALL_MODEL_OPTS,
        *[str(x) for x in ["MODEL.ATSS.NUM_CLASSES", len(CLASSES), *OPTS, *extra]],
        "MODEL.WEIGHTS", str(work / "weights.pth"),
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert tool.main(tool.get_parser().parse_args(argv)) == 0
    return cfg, model, printed.getvalue()


def _write(path: Path, height: int, width: int, seed: int, mode: str = "RGB") -> str:
    boxes = [[width * 0.1, height * 0.2, width * 0.6, height * 0.7]]
    image = Image.fromarray(draw_image(height, width, boxes, seed=seed)).convert(mode)
    image.save(path)
    return str(path)


def _run_snippet(work: Path, photo: str, monkeypatch):
    """The doc's block, only the photo's file name replaced, run in ``work``."""
    code = _snippet().replace('"photo.jpg"', repr(photo))
    monkeypatch.chdir(work)
    namespace = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "DEPLOY.md", "exec"), namespace)
    return namespace, printed.getvalue().splitlines()


def _pytorch(cfg, model, photo: str):
    """detectron2's test pipeline: the image read in INPUT.FORMAT, resized, boxes scaled back."""
    image = read_image_any_mode(photo, cfg.INPUT.FORMAT)
    h, w = image.shape[:2]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        return model([{"image": tensor, "height": h, "width": w}])[0]["instances"]


# The shipped configs' RGB input; the authors' "+1" boxes on BGR input.
VARIANTS = {
    "rgb": [],
    "bgr_legacy_plus_one": ["INPUT.FORMAT", "BGR", "MODEL.ATSS.LEGACY_PLUS_ONE", True],
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy")
    cfg, model, _ = _export(work, *VARIANTS[request.param])
    return work, cfg, model


def test_outputs_json_describes_the_export(exported):
    work, cfg, _ = exported
    info = json.loads((work / "exported" / "outputs.json").read_text())
    assert info["outputs"] == ["pred_boxes", "pred_classes", "scores", "image_size"]
    assert info["classes"] == CLASSES and info["classes_from"] == "MODEL.WEIGHTS"
    assert info["input_format"] == cfg.INPUT.FORMAT
    assert (info["min_size_test"], info["max_size_test"]) == (48, 80)


def test_onnx_outputs_have_the_documented_types(exported):
    import onnxruntime

    work, _, _ = exported
    session = onnxruntime.InferenceSession(
        str(work / "exported" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == (
        "image",
        "tensor(float)",
        [3, "height", "width"],
    )
    types = {o.name: (o.type, len(o.shape)) for o in session.get_outputs()}
    assert types == {
        "pred_boxes": ("tensor(float)", 2),
        "pred_classes": ("tensor(int64)", 1),
        "scores": ("tensor(float)", 1),
        "image_size": ("tensor(int64)", 1),
    }


# (height, width, mode): wider, taller (long side capped by MAX_SIZE_TEST), square; gray, RGBA.
PHOTOS = [(60, 150, "RGB"), (130, 50, "L"), (99, 99, "RGBA")]


@pytest.mark.parametrize("height,width,mode", PHOTOS)
def test_doc_snippet_gives_pytorch_detections(exported, height, width, mode, monkeypatch):
    work, cfg, model = exported
    suffix = ".jpg" if mode != "RGBA" else ".png"
    photo = _write(work / f"photo_{mode}{suffix}", height, width, seed=height, mode=mode)
    ns, printed = _run_snippet(work, photo, monkeypatch)
    expected = _pytorch(cfg, model, photo)
    assert expected.image_size == (height, width)
    assert len(expected) > 0
    assert ns["boxes"].shape == (len(expected), 4)
    np.testing.assert_allclose(ns["boxes"], expected.pred_boxes.tensor.numpy(), atol=1e-2)
    np.testing.assert_allclose(ns["scores"], expected.scores.numpy(), atol=1e-4)
    np.testing.assert_array_equal(ns["classes"], expected.pred_classes.numpy())
    assert len(printed) == len(expected)
    first = expected.pred_classes[0]
    assert printed[0].startswith(f"{CLASSES[first]} {float(expected.scores[0]):.2f} ")


def test_doc_snippet_with_no_detections(tmp_path, monkeypatch):
    """A model that finds nothing (every class probability under the threshold): the snippet
    handles D = 0, and the tool says that its check compared nothing."""
    cfg, model, printed = _export(tmp_path, "MODEL.ATSS.SCORE_THRESH_TEST", 0.999)
    assert "nothing compared" in printed
    photo = _write(tmp_path / "photo.jpg", 70, 90, seed=1)
    assert len(_pytorch(cfg, model, photo)) == 0
    ns, lines = _run_snippet(tmp_path, photo, monkeypatch)
    assert ns["boxes"].shape == (0, 4) and ns["scores"].shape == (0,) and lines == []
