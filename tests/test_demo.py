"""
demo/demo.py and atss_d2.demo: files, quoted globs and directories as inputs; an output
directory or file; one image in memory at a time; the drawn score (sqrt(p_cls * p_ctr)) filtered
by --confidence-threshold; detections in COCO results format; videos; class names; failures
that name the input, exit 1 and leave the other outputs written.

The end-to-end runs use the tiny model with a head whose outputs are constant (weights 0,
biases chosen): class probabilities 0.6 and 0.18 and centerness 0.25 at every anchor, so every
final score is known by hand: sqrt(0.6 * 0.25) = 0.3873 (class 0), sqrt(0.18 * 0.25) = 0.2121
(class 1).
"""

import json
import logging
import math
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import Metadata, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tiny_setup import (
    BASE_CONFIG,
    TINY_OPTS,
    draw_image,
    load_script,
    one_torch_thread,
    registered,
    tiny_cfg,
)

import atss_d2.demo
from atss_d2.demo import (
    ClassNamesError,
    DemoFailed,
    InputError,
    VisualizationDemo,
    candidate_threshold,
    class_metadata,
    expand_inputs,
    filter_by_score,
    instances_to_coco_results,
    model_score_threshold,
    output_paths,
    run_demo,
    run_on_image_files,
    run_on_video,
    video_output_path,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "demo.py"
P_CLS = (0.6, 0.18)
P_CTR = 0.25
SCORES = (math.sqrt(0.15), math.sqrt(0.045))  # sqrt(p_cls * p_ctr) per class: 0.3873, 0.2121
# Few boxes to draw: NMS at IoU 0.01 keeps non-overlapping anchors, of both classes.
FEW_BOXES = ["MODEL.ATSS.NMS_THRESH_TEST", "0.01", "TEST.DETECTIONS_PER_IMAGE", "1000"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _demo():
    return load_script(DEMO)


def _image(path, height=64, width=80, seed=0):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_image(height, width, [(20, 10, 60, 40)], seed)).save(path)
    return path


def _logit(p):
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def constant_head(tmp_path_factory):
    """A checkpoint of the tiny model whose head predicts P_CLS, P_CTR and zero box deltas
    everywhere (boxes: the anchors)."""
    model = build_model(tiny_cfg(tmp_path_factory.mktemp("unused")))
    head = model.head
    with torch.no_grad():
        for conv in (head.cls_score, head.centerness, head.bbox_pred):
            conv.weight.zero_()
            conv.bias.zero_()
        head.cls_score.bias.copy_(torch.tensor([_logit(p) for p in P_CLS]))
        head.centerness.bias.fill_(_logit(P_CTR))
    path = tmp_path_factory.mktemp("weights") / "constant_head.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _run(*args, weights, threshold, opts=()):
    return _demo().main([
        "--config-file", str(BASE_CONFIG),
        *map(str, args),
        "--confidence-threshold", str(threshold),
        "--opts", *TINY_OPTS, "MODEL.WEIGHTS", weights, *opts,
    ])  # fmt: skip


class _Stub:
    """A predictor whose detections are given: XYXY boxes, scores, classes."""

    def __init__(self, boxes, scores, classes):
        self.boxes, self.scores, self.classes = boxes, scores, classes

    def __call__(self, image):
        instances = Instances(image.shape[:2])
        instances.pred_boxes = Boxes(torch.tensor(self.boxes, dtype=torch.float32))
        instances.scores = torch.tensor(self.scores)
        instances.pred_classes = torch.tensor(self.classes)
        return {"instances": instances}


def _stub_demo(threshold=0.5):
    boxes = [[2, 2, 20, 20], [30, 5, 50, 25], [5, 30, 25, 50], [40, 40, 60, 60]]
    stub = _Stub(boxes, [0.9, 0.49, 0.5, 0.2], [0, 1, 1, 0])
    return VisualizationDemo(stub, class_metadata(tiny_cfg("unused")), threshold)


# ----------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------
def test_inputs_are_files_globs_and_directories(tmp_path):
    photos = tmp_path / "photos"
    for name in ("b.png", "a.JPG", "c.jpeg"):
        _image(photos / name)
    (photos / "notes.txt").write_text("not an image")
    (photos / "d.png").symlink_to(tmp_path / "moved.png")  # a link to a missing file
    _image(photos / "sub" / "deeper.png")  # not listed: directories are not recursed
    _image(tmp_path / "more" / "x1.png")
    _image(tmp_path / "more" / "x0.png")
    (tmp_path / "more" / "x2.txt").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "readme.md").write_text("")
    missing = tmp_path / "missing.png"

    paths, failures = expand_inputs([
        str(photos), str(tmp_path / "more" / "x*.png"), str(missing),
        str(tmp_path / "empty"), str(tmp_path / "text_only"), str(tmp_path / "none*.png"),
    ])  # fmt: skip
    assert paths == [
        str(photos / "a.JPG"),  # sorted by name
        str(photos / "b.png"),
        str(photos / "c.jpeg"),
        str(tmp_path / "more" / "x0.png"),
        str(tmp_path / "more" / "x1.png"),
        str(missing),  # kept: reported when read
    ]
    assert len(failures) == 4
    assert failures[0] == f"input image {photos / 'd.png'} is a link to a missing file"
    assert str(tmp_path / "empty") in failures[1] and "no image" in failures[1]
    assert str(tmp_path / "text_only") in failures[2]
    assert str(tmp_path / "none*.png") in failures[3] and "matches no file" in failures[3]


def test_output_is_a_directory_or_the_file_of_one_input(tmp_path):
    inputs = ["a/x.jpg", "b/x.jpg", "c/y.gif", "d/z.PNG"]
    out = str(tmp_path / "vis")
    assert output_paths(inputs, out) == [
        f"{out}/x.jpg",
        f"{out}/x_1.jpg",  # a repeated name
        f"{out}/y.png",  # OpenCV writes no GIF
        f"{out}/z.PNG",
    ]
    assert output_paths(["a/x.jpg"], str(tmp_path / "one.png")) == [str(tmp_path / "one.png")]
    assert output_paths(["a/x.jpg"], out) == [f"{out}/x.jpg"]  # no image extension: a directory
    with pytest.raises(InputError, match=r"--output .*one\.png is a file name, but there are 2"):
        output_paths(inputs[:2], str(tmp_path / "one.png"))
    assert output_paths(inputs[:2], None) == [None, None]

    assert video_output_path("in/clip.avi", str(tmp_path / "v.mp4")) == str(tmp_path / "v.mp4")
    assert video_output_path("in/clip.avi", out) == f"{out}/clip.avi"
    assert video_output_path("in/clip.mov", out) == f"{out}/clip.mp4"
    assert video_output_path("in/clip.mov", None) is None


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------
def test_the_model_threshold_keeps_every_candidate_that_can_pass():
    # sqrt(p_cls * p_ctr) >= t needs p_cls >= t^2 (p_ctr <= 1); p_cls * p_ctr >= t: p_cls >= t.
    assert candidate_threshold(0.5, "sqrt") == pytest.approx(0.25)
    assert candidate_threshold(0.5, "product") == pytest.approx(0.5)
    assert candidate_threshold(-1.0, "sqrt") == 0.0
    cfg = tiny_cfg("unused")  # SCORE_THRESH_TEST 0.05
    assert model_score_threshold(cfg, 0.5) == pytest.approx(0.05)  # the config's, lower
    assert model_score_threshold(cfg, 0.2) == pytest.approx(0.04)  # 0.2^2
    cfg.MODEL.ATSS.SCORE_MODE = "product"
    assert model_score_threshold(cfg, 0.02) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="SCORE_MODE"):
        candidate_threshold(0.5, "max")


def test_only_detections_at_or_above_the_threshold_are_drawn(monkeypatch):
    drawn_labels = []

    class RecordingVisualizer(Visualizer):
        def overlay_instances(self, *, labels=None, **kwargs):
            drawn_labels.extend(labels or [])
            return super().overlay_instances(labels=labels, **kwargs)

    monkeypatch.setattr(atss_d2.demo, "Visualizer", RecordingVisualizer)
    demo = _stub_demo(threshold=0.5)
    image = np.zeros((64, 80, 3), np.uint8)
    instances, drawn = demo.run_on_image(image)
    assert instances.scores.tolist() == pytest.approx([0.9, 0.5])  # 0.49 and 0.2 are dropped
    assert instances.pred_classes.tolist() == [0, 1]
    # No dataset: "class N" (detectron2 alone would write "0 90%").
    assert drawn_labels == ["class 0 90%", "class 1 50%"]
    assert drawn.shape == image.shape and drawn.any()  # boxes on a black image
    kept = filter_by_score(_Stub([[0, 0, 1, 1]] * 2, [0.3, 0.7], [0, 0])(image)["instances"], 0.7)
    assert kept.scores.tolist() == pytest.approx([0.7])


def test_the_threshold_applies_to_the_final_score(tmp_path, constant_head):
    image = _image(tmp_path / "a.png")
    # p_cls of class 0 (0.6) is above 0.5, its score sqrt(0.6 * 0.25) = 0.387 below: not drawn.
    out = tmp_path / "one.png"
    outs = _run(
        "--input", image, "--output", out, "--save-json", tmp_path / "high.json",
        weights=constant_head, threshold=0.5, opts=FEW_BOXES,
    )  # fmt: skip
    assert outs == [str(out)]  # --output with an image extension: the file of the one input
    assert json.loads((tmp_path / "high.json").read_text()) == []
    with Image.open(image) as a, Image.open(out) as b:  # nothing drawn: the input, as PNG
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))

    # p_cls of class 1 (0.18) is below 0.2, its score sqrt(0.18 * 0.25) = 0.212 above: drawn.
    _run(
        "--input", image, "--output", tmp_path / "vis", "--save-json", tmp_path / "low.json",
        weights=constant_head, threshold=0.2, opts=FEW_BOXES,
    )  # fmt: skip
    results = json.loads((tmp_path / "low.json").read_text())
    by_class = {c: [r["score"] for r in results if r["category_id"] == c] for c in (0, 1)}
    assert by_class[0] and by_class[1]
    assert by_class[0] == pytest.approx([SCORES[0]] * len(by_class[0]), abs=1e-5)
    assert by_class[1] == pytest.approx([SCORES[1]] * len(by_class[1]), abs=1e-5)
    assert len(by_class[0]) + len(by_class[1]) == len(results)
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x < x + w <= 80 and 0 <= y < y + h <= 64  # anchors clipped to the image
        assert (r["image_id"], r["file_name"]) == (0, str(image))


# ----------------------------------------------------------------------------------------------
# Class names and COCO results
# ----------------------------------------------------------------------------------------------
def test_class_names_come_from_the_dataset_the_config_or_are_numbered():
    cfg = tiny_cfg("unused")  # 2 classes, DATASETS.TEST ()
    assert class_metadata(cfg).thing_classes == ["class 0", "class 1"]
    assert class_metadata(cfg, classes="cat, dog").thing_classes == ["cat", "dog"]
    cfg.DATASETS.TEST = ("demo_not_registered",)
    assert class_metadata(cfg).thing_classes == ["class 0", "class 1"]
    assert "demo_not_registered" not in MetadataCatalog.list()  # the catalog is left alone
    with registered("demo_test_set", [], classes=("emu", "owl")):
        cfg.DATASETS.TEST = ("demo_test_set",)
        assert class_metadata(cfg).thing_classes == ["emu", "owl"]
        with registered("demo_given", [], classes=("ant", "bee")):
            # A --coco-dataset / --voc-dataset comes before the config's test set.
            assert class_metadata(cfg, ["demo_given"]).thing_classes == ["ant", "bee"]
        with registered("demo_three", [], classes=("a", "b", "c")):
            message = r"dataset 'demo_three' has 3 class names .*NUM_CLASSES 2"
            with pytest.raises(ClassNamesError, match=message):
                class_metadata(cfg, ["demo_three"])


def test_saved_class_names_come_before_a_config_test_set_of_another_count(caplog):
    # A COCO config's test set (here 3 names) beside a model fine-tuned to 2 classes: the
    # names saved with the weights label the boxes; without them, the boxes are numbered.
    cfg = tiny_cfg("unused")  # 2 classes
    with registered("demo_coco_like", [], classes=("a", "b", "c")):
        cfg.DATASETS.TEST = ("demo_coco_like",)
        assert class_metadata(cfg, (), None, ["fox", "elk"]).thing_classes == ["fox", "elk"]
        with caplog.at_level(logging.WARNING, logger="atss_d2.demo"):
            assert class_metadata(cfg).thing_classes == ["class 0", "class 1"]
        assert "DATASETS.TEST[0] 'demo_coco_like': it has 3 classes" in caplog.text
        with registered("demo_pair", [], classes=("emu", "owl")):
            # Names given come before those saved.
            given = class_metadata(cfg, ["demo_pair"], None, ["fox", "elk"])
            assert given.thing_classes == ["emu", "owl"]


def test_coco_results_of_one_image():
    instances = Instances((64, 80))
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 8.0, 4.0]]))
    instances.scores = torch.tensor([0.75, 0.5])
    instances.pred_classes = torch.tensor([1, 0])
    assert instances_to_coco_results(instances, 7, "dir/a.png") == [
        {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75,
         "file_name": "dir/a.png"},
        {"image_id": 7, "category_id": 0, "bbox": [0.0, 0.0, 8.0, 4.0], "score": 0.5,
         "file_name": "dir/a.png"},
    ]  # fmt: skip
    # A COCO json's category ids (e.g. 3 and 8), where the metadata maps them.
    coco = Metadata(name="m", thing_dataset_id_to_contiguous_id={3: 0, 8: 1})
    assert [r["category_id"] for r in instances_to_coco_results(instances, 7, "a", coco)] == [8, 3]
    assert instances_to_coco_results(instances[[]], 7, "a") == []


# ----------------------------------------------------------------------------------------------
# The loops
# ----------------------------------------------------------------------------------------------
def test_images_are_read_one_at_a_time(tmp_path):
    first = _image(tmp_path / "in" / "first.png")
    second = tmp_path / "in" / "second.png"  # not there yet
    paths = [str(first), str(second)]
    outs = output_paths(paths, str(tmp_path / "out"))
    results = run_on_image_files(_stub_demo(), paths, outs)
    result = next(results)
    assert result.error is None and len(result.instances) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.png"]
    # The second image is read only now: had all been loaded up front, it would be missing.
    _image(second, 32, 48)
    result = next(results)
    assert result.error is None and result.image_id == 1
    with Image.open(result.output) as drawn:
        assert drawn.size == (48, 32)
    assert next(results, None) is None


def test_an_output_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    paths = [str(_image(tmp_path / "x.png")), str(_image(tmp_path / "y.png"))]
    outs = [str(tmp_path / "a_file" / "x.png"), str(tmp_path / "out" / "y.png")]
    results = list(run_on_image_files(_stub_demo(), paths, outs))
    assert results[0].error.startswith(f"could not write {outs[0]} (for {paths[0]})")
    assert results[1].error is None and Path(outs[1]).is_file()  # the next one still is


def test_every_kind_of_input_is_run_and_saved(tmp_path, constant_head):
    photos = tmp_path / "photos"
    inputs = [_image(photos / "b.png", seed=1), _image(photos / "a.jpg", 48, 64, seed=2)]
    (photos / "notes.txt").write_text("skipped")
    inputs.append(_image(tmp_path / "glob" / "g.png", 40, 56, seed=3))
    inputs.append(_image(tmp_path / "c.bmp", 56, 72, seed=4))
    outs = _run(
        "--input", photos, tmp_path / "glob" / "*.png", tmp_path / "c.bmp",
        "--output", tmp_path / "vis", "--save-json", tmp_path / "dets.json",
        weights=constant_head, threshold=0.2, opts=FEW_BOXES,
    )  # fmt: skip
    order = [photos / "a.jpg", photos / "b.png", tmp_path / "glob" / "g.png", tmp_path / "c.bmp"]
    assert [Path(p).name for p in outs] == ["a.jpg", "b.png", "g.png", "c.bmp"]
    for src, out in zip(order, outs):
        with Image.open(src) as a, Image.open(out) as b:
            assert b.size == a.size and b.mode == "RGB"
            assert not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))  # boxes
    results = json.loads((tmp_path / "dets.json").read_text())
    assert {(r["image_id"], r["file_name"]) for r in results} == {
        (i, str(p)) for i, p in enumerate(order)
    }
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "file_name"}
    assert min(r["score"] for r in results) >= 0.2


def _write_video(path, frames):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame.astype(np.int16))


def test_video_frames_are_drawn_and_written(tmp_path, constant_head):
    clip = tmp_path / "clip.mp4"
    _write_video(
        clip, [draw_image(64, 80, [(10 + 5 * i, 10, 40 + 5 * i, 40)], i) for i in range(3)]
    )
    outs = _run(
        "--video-input", clip, "--output", tmp_path / "vis", "--save-json", tmp_path / "v.json",
        weights=constant_head, threshold=0.2, opts=["TEST.DETECTIONS_PER_IMAGE", "3"],
    )  # fmt: skip
    assert outs == [str(tmp_path / "vis" / "clip.mp4")]
    source, drawn = _read_video(clip), _read_video(outs[0])
    assert len(source) == 3 and len(drawn) == len(source)
    # Encoding the frames again without drawing changes no pixel by 100 or more (measured: at
    # most ~20); the drawn boxes and labels do, on hundreds of pixels of each frame.
    _write_video(tmp_path / "again.mp4", [f.astype(np.uint8) for f in source])
    again = _read_video(tmp_path / "again.mp4")
    assert all(np.abs(a - b).max() < 100 for a, b in zip(source, again))
    assert all((np.abs(a - b).max(axis=2) >= 100).sum() > 50 for a, b in zip(source, drawn))
    results = json.loads((tmp_path / "v.json").read_text())
    # 3 detections per frame, all of class 0 (0.387 > 0.212), frames numbered from 0.
    assert sorted(r["image_id"] for r in results) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {(r["category_id"], r["file_name"]) for r in results} == {(0, str(clip))}


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------
def test_failures_are_named_after_the_others_are_written(tmp_path, monkeypatch, capsys):
    good = _image(tmp_path / "ok.png")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sys, "argv", [
        str(DEMO), "--config-file", str(BASE_CONFIG),
        "--input", str(bad), str(tmp_path / "missing.png"), str(tmp_path / "empty"),
        str(tmp_path / "nothing" / "*.jpg"), str(good),
        "--output", str(tmp_path / "out"), "--save-json", str(tmp_path / "dets.json"),
        "--confidence-threshold", "0.0",
        "--opts", *TINY_OPTS, "TEST.DETECTIONS_PER_IMAGE", "2",
    ])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(DEMO), run_name="__main__")
    assert exit_.value.code == 1
    stderr = capsys.readouterr().err
    report = stderr[stderr.index("demo.py: 4 input(s) failed") :]
    for name in ("not_an_image.png", "missing.png", "empty", "nothing/*.jpg"):
        assert name in report
    assert "ok.png" not in report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]
    results = json.loads((tmp_path / "dets.json").read_text())
    assert [r["file_name"] for r in results] == [str(good)] * 2
    # Its position among the image paths found: not_an_image.png, missing.png, ok.png.
    assert {r["image_id"] for r in results} == {2}


def test_unreadable_videos_are_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    clip = tmp_path / "clip.mp4"
    _write_video(clip, [draw_image(32, 32, [], 0)] * 2)
    demo = _stub_demo()
    for source, output, message in [
        (str(bad), None, r"cannot read .*bad\.mp4"),
        (str(tmp_path / "gone.avi"), None, r"input video not found: .*gone\.avi"),
        (str(clip), str(tmp_path / "out.mkv"), r"cannot write .*out\.mkv .*'\.mkv'"),
    ]:
        with pytest.raises(DemoFailed, match=message) as failed:
            run_demo(run_on_video(demo, source, output), demo.metadata)
        assert len(failed.value.failures) == 1 and failed.value.outputs == []
    assert not (tmp_path / "out.mkv").exists()
    # The frames of a readable one are all run.
    assert run_demo(run_on_video(demo, str(clip), str(tmp_path / "o.avi")), demo.metadata) == [
        str(tmp_path / "o.avi")
    ]
    assert len(_read_video(tmp_path / "o.avi")) == 2


def test_main_raises_after_writing_what_worked(tmp_path):
    good = _image(tmp_path / "ok.png")
    with pytest.raises(DemoFailed, match="not_there.png") as failed:
        _run(
            "--input", good, tmp_path / "not_there.png", "--output", tmp_path / "out",
            weights="", threshold=0.5,
        )  # fmt: skip
    assert failed.value.outputs == [str(tmp_path / "out" / "ok.png")]
    assert (tmp_path / "out" / "ok.png").is_file()


def test_save_json_uses_the_dataset_image_ids_when_the_inputs_are_its_images(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[-1])
    # A dataset whose ids are not the positions: 10, 20 for 0.png, 1.png (2.png is not in it).
    dicts = [{"file_name": paths[i], "image_id": 10 * (i + 1), "height": 8, "width": 8,
              "annotations": []} for i in range(2)]  # fmt: skip
    with registered("demo_ids", dicts) as name:
        ids = atss_d2.demo.dataset_image_ids(name)
        assert ids == {str(Path(p).resolve()): 10 * (i + 1) for i, p in enumerate(paths[:2])}
    assert atss_d2.demo.dataset_image_ids("demo_ids_not_registered") is None

    def results(inputs):
        for position, path in enumerate(inputs):
            instances = Instances((8, 8))
            instances.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 4.0, 4.0]]))
            instances.scores = torch.tensor([0.9])
            instances.pred_classes = torch.tensor([0])
            yield atss_d2.demo.DemoResult(path, position, instances)

    metadata = Metadata(name="x", thing_classes=["a"])
    out = tmp_path / "det.json"
    # The inputs in another order than the dataset's, one through a relative-looking path.
    inputs = [paths[1], str(tmp_path / "." / "0.png")]
    run_demo(results(inputs), metadata, str(out), image_ids=ids)
    assert [(r["file_name"], r["image_id"]) for r in json.loads(out.read_text())] == [
        (inputs[0], 20),
        (inputs[1], 10),
    ]
    # An input outside the dataset: every image keeps its position, no mix of the two.
    run_demo(results([paths[1], paths[2]]), metadata, str(out), image_ids=ids)
    assert [r["image_id"] for r in json.loads(out.read_text())] == [0, 1]
