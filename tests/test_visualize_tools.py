"""
tools/visualize_data.py, tools/visualize_json_results.py, tools/analyze_results.py and the
confusion matrix of atss_d2.analysis, on hand-built cases and tiny generated datasets.

The tiny dataset (tiny_setup.image_dicts, 3 images of 64x80): a bright (230, 200, 40) rectangle
per box on dark noise; image i has a "square" (class 0) at [4 + 3i, 6, 30 + 3i, 34] (XYXY), and
image 1 also a "disc" (class 1) at [40, 30, 70, 60]. Its COCO json declares the categories with
ids 3 (square) and 7 (disc), so that the results' ids must go through the dataset's
thing_dataset_id_to_contiguous_id {3: 0, 7: 1}.
"""

import contextlib
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.colormap import colormap
from PIL import Image
from tiny_setup import BASE_CONFIG, TINY_OPTS, image_dicts, load_script, registered, write_coco_json

from atss_d2.analysis import (
    confusion_matrix,
    load_coco_results,
    per_class_report,
    precision_recall,
)
from atss_d2.data import register_datasets_from_args
from atss_d2.evaluation import ATSSCOCOEvaluator

REPO = Path(__file__).resolve().parents[1]
SQUARE, DISC = 0, 1  # rows / columns of the 2-class matrices below; 2 is the background
DATASET_IDS = {0: 3, 1: 7}  # contiguous class -> category id in the tiny COCO json


def _tool(name):
    return load_script(f"tools/{name}.py")


def _gt(box, category, crowd=0):
    return {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": crowd}


def _det(image_id, category, xywh, score):
    return {"image_id": image_id, "category_id": category, "bbox": xywh, "score": score}


def _image(annotations, image_id=0):
    return {"file_name": f"{image_id}.png", "image_id": image_id, "height": 100, "width": 100,
            "annotations": annotations}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The confusion matrix on hand-built cases
# ----------------------------------------------------------------------------------------------
# One 100x100 image. Ground truth: A square [0,0,20,20], B square [40,0,60,20], C disc
# [0,50,20,70]. Detections (XYWH):
#   d1 square on A exactly, 0.9        -> true positive                   [sq, sq]
#   d2 square on C exactly, 0.8        -> C is a disc: a confusion        [disc, sq]
#   d3 disc at [80,80,95,95], 0.5      -> nothing there (0.5 is counted)  [bg, disc]
#   d4 square [2,0,22,20], 0.6: IoU with A = 18*20 / (400 + 400 - 360) = 0.82, but A is taken
#                                      -> a duplicate                      [bg, sq]
#   d5 disc on B exactly, 0.3          -> below the 0.5 score threshold: not counted
#   B unmatched                        -> missed                          [sq, bg]
CASE = [
    _image([_gt([0, 0, 20, 20], SQUARE), _gt([40, 0, 60, 20], SQUARE), _gt([0, 50, 20, 70], DISC)])
]
CASE_DETS = [
    _det(0, SQUARE, [0, 0, 20, 20], 0.9),
    _det(0, SQUARE, [0, 50, 20, 20], 0.8),
    _det(0, DISC, [80, 80, 15, 15], 0.5),
    _det(0, SQUARE, [2, 0, 20, 20], 0.6),
    _det(0, DISC, [40, 0, 20, 20], 0.3),
]


def test_confusion_matrix_hand_built_case():
    matrix = confusion_matrix(CASE, CASE_DETS, num_classes=2)
    # rows: gt square, gt disc, background; columns: predicted square, disc, background
    assert matrix.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]
    precision, recall = precision_recall(matrix)
    # square: 1 TP of 3 square detections (d1, d2, d4), 1 of 2 square objects (A, B);
    # disc: 0 of 1 detection (d3), 0 of 1 object (C).
    np.testing.assert_allclose(precision, [1 / 3, 0.0])
    np.testing.assert_allclose(recall, [1 / 2, 0.0])


def test_lower_score_threshold_counts_d5():
    # With d5 (disc on square B, 0.3) counted: B is taken by d5, a confusion [sq, disc]; B is no
    # longer missed. The rest is as above.
    matrix = confusion_matrix(CASE, CASE_DETS, num_classes=2, score_threshold=0.2)
    assert matrix.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 0]]


def test_own_class_first():
    # A square object with a disc detection on it (0.9, exact) and a square one (0.8, IoU 0.82):
    # the square detection takes it (a true positive); the disc detection finds no object of
    # another class left: a background detection, not a confusion.
    image = [_image([_gt([0, 0, 20, 20], SQUARE)])]
    dets = [_det(0, DISC, [0, 0, 20, 20], 0.9), _det(0, SQUARE, [2, 0, 20, 20], 0.8)]
    assert confusion_matrix(image, dets, 2).tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_greedy_by_score_each_object_once():
    # Squares G1 [0,0,20,20] and G2 [10,0,30,20]. a [6,0,26,20] (0.9): IoU 280/520 = 0.54 with
    # G1, 320/480 = 0.67 with G2 -> takes G2 (highest IoU). b = G2 exactly (0.8): G2 is taken,
    # IoU with G1 = 200/600 = 0.33 < 0.5 -> background. G1 missed. (An optimal assignment would
    # have found two true positives.)
    image = [_image([_gt([0, 0, 20, 20], SQUARE), _gt([10, 0, 30, 20], SQUARE)])]
    dets = [_det(0, SQUARE, [6, 0, 20, 20], 0.9), _det(0, SQUARE, [10, 0, 20, 20], 0.8)]
    assert confusion_matrix(image, dets, 2).tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_ignore_regions():
    # A crowd region [0,0,50,50] (a square crowd, iscrowd 1) and a disc [60,60,90,90].
    #   square [10,10,30,30]: IoU with the region 400/2500 = 0.16, but it lies inside it
    #     (intersection / its area = 1) -> dropped
    #   square [40,0,60,20]: half inside (200 / 400 = 0.5 >= 0.5) -> dropped
    #   square [45,0,65,20]: a quarter inside (100 / 400) -> background [bg, sq]
    #   disc on the disc -> true positive. The region is never "missed".
    image = [_image([_gt([0, 0, 50, 50], SQUARE, crowd=1), _gt([60, 60, 90, 90], DISC)])]
    dets = [
        _det(0, SQUARE, [10, 10, 20, 20], 0.9),
        _det(0, SQUARE, [40, 0, 20, 20], 0.9),
        _det(0, SQUARE, [45, 0, 20, 20], 0.9),
        _det(0, DISC, [60, 60, 30, 30], 0.9),
    ]
    matrix = confusion_matrix(image, dets, 2)
    assert matrix.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
    report = per_class_report(matrix, ["square", "disc"])
    square, disc = report["classes"]
    assert (square["objects"], square["detections"], square["precision"]) == (0, 1, 0.0)
    assert square["recall"] is None  # no square object: undefined, null in JSON
    assert (disc["precision"], disc["recall"]) == (1.0, 1.0)


def test_detections_of_unknown_images_are_an_error():
    with pytest.raises(ValueError, match=r"image id.*\[5\]"):
        confusion_matrix(CASE, [_det(5, SQUARE, [0, 0, 20, 20], 0.9)], 2)


def test_load_coco_results_maps_category_ids(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([_det(0, 7, [0, 0, 5, 5], 0.9), _det(1, 3, [0, 0, 5, 5], 0.8)]))
    mapped = Metadata(
        name="m", thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={3: 0, 7: 1}
    )
    assert [r["category_id"] for r in load_coco_results(str(path), mapped)] == [1, 0]
    # Without a mapping (atss_d2's VOC folders), ids are contiguous already: 7 is out of range.
    with pytest.raises(ValueError, match="category_id 7"):
        load_coco_results(str(path), Metadata(name="voc", thing_classes=["a", "b"]))
    path.write_text(json.dumps([_det(0, 1, [0, 0, 5, 5], 0.9)]))
    plain = load_coco_results(str(path), Metadata(name="voc", thing_classes=["a", "b"]))
    assert plain[0]["category_id"] == 1
    with pytest.raises(ValueError, match="category_id 1.*another dataset"):
        load_coco_results(str(path), mapped)


# ----------------------------------------------------------------------------------------------
# The tools on a tiny COCO-format dataset
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    """(dataset name, its --coco-dataset flag values, the raw RGB images)."""
    dicts = image_dicts(tmp_path / "images", num_images=3)
    json_file = tmp_path / "train.json"
    write_coco_json(json_file, dicts)
    data = json.loads(json_file.read_text())
    for entry in data["annotations"] + data["categories"]:  # ids 1, 2 -> 3, 7
        key = "category_id" if "category_id" in entry else "id"
        entry[key] = DATASET_IDS[entry[key] - 1]
    json_file.write_text(json.dumps(data))
    name = f"vis_{uuid.uuid4().hex[:8]}"
    raw = [np.asarray(Image.open(d["file_name"]).convert("RGB")) for d in dicts]
    yield name, [name, str(json_file), str(tmp_path / "images")], raw
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _visualize_data(tmp_path, tiny, source, *opts):
    name, flags, _ = tiny
    out = tmp_path / source
    argv = ["--config-file", str(BASE_CONFIG), "--source", source, "--output-dir", str(out)]
    argv += ["--coco-dataset", *flags, *TINY_OPTS, "DATASETS.TRAIN", f"('{name}',)", *opts]
    assert _tool("visualize_data").main(argv) == 0
    return out


def test_visualize_data_annotation(tmp_path, tiny):
    out = _visualize_data(tmp_path, tiny, "annotation")
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    for i, raw in enumerate(tiny[2]):
        drawn = _read(out / f"img{i}.png")
        assert drawn.shape == (64, 80, 3)  # the image's own size
        # The square's left edge (x = 4 + 3i) is drawn over the image; the top-right corner,
        # away from the boxes and their labels, is the image itself.
        assert np.abs(drawn[20, 4 + 3 * i] - raw[20, 4 + 3 * i]).max() > 20
        assert (drawn[2, 76] == raw[2, 76]).all()


def test_visualize_data_dataloader(tmp_path, tiny):
    # Resized to a 96 px short side (64x80 -> 96x120, factor 1.5), no flip, BGR model input.
    out = _visualize_data(
        tmp_path, tiny, "dataloader",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "200", "INPUT.FORMAT", "BGR",
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    for i, raw in enumerate(tiny[2]):
        drawn = _read(out / f"img{i}.png")
        assert drawn.shape == (96, 120, 3)
        # The mapper's image: the file resized bilinearly to 120x96 (the channel order does not
        # change a per-channel resize).
        resized = np.asarray(Image.fromarray(raw).resize((120, 96), Image.BILINEAR)).astype(int)
        x0 = round((4 + 3 * i) * 1.5)  # the square: x from 6 + 4.5i, y 9 to 51
        assert np.abs(drawn[30, x0] - resized[30, x0]).max() > 20
        assert (drawn[2, 116] == resized[2, 116]).all()
        # Inside the square, below its label: the rectangle's colour in RGB order, converted
        # from the BGR input (unconverted it would read (40, 200, 230)).
        assert drawn[45, x0 + 15].tolist() == [230, 200, 40]


def _write_results(path, detections):
    path.write_text(json.dumps(detections))
    return str(path)


# Results in the json's category ids (3 = square, 7 = disc), as COCOEvaluator writes them:
#   image 0: square on its square (0.9); a disc at [40,30,70,60] with 0.3 (below 0.5)
#   image 1: disc on its disc (0.8); disc on its square [7,6,33,34] (0.7)
#   image 2: nothing (its square is missed)
RESULTS = [
    _det(0, 3, [4, 6, 26, 28], 0.9),
    _det(0, 7, [40, 30, 30, 30], 0.3),
    _det(1, 7, [40, 30, 30, 30], 0.8),
    _det(1, 7, [7, 6, 26, 28], 0.7),
]


def test_visualize_json_results(tmp_path, tiny):
    name, flags, raw = tiny
    results = _write_results(tmp_path / "results.json", RESULTS)
    out = tmp_path / "vis"
    argv = ["--input", results, "--dataset", name, "--output", str(out), "--coco-dataset", *flags]
    assert _tool("visualize_json_results").main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    palette = colormap(rgb=True, maximum=255)  # the colours of classes 0 and 1

    def nearest_class(drawn, under):
        # An edge is drawn with alpha 0.5 over the image: which class colour explains it best?
        return int(np.argmin([np.abs(2 * drawn - under - palette[c]).max() for c in (0, 1)]))

    for i in range(3):
        drawn = _read(out / f"img{i}.png")
        assert drawn.shape == (64, 160, 3)  # ground truth | detections
        gt, dets = drawn[:, :80], drawn[:, 80:]
        edge = (20, 4 + 3 * i)  # the square's left edge
        assert np.abs(gt[edge] - raw[i][edge]).max() > 20
        assert nearest_class(gt[edge], raw[i][edge]) == 0
        if i == 0:  # category 3 -> class 0
            assert nearest_class(dets[edge], raw[i][edge]) == 0
            # the 0.3 disc is not drawn: its bottom edge (y = 60) is the image
            assert (dets[60, 55] == raw[i][60, 55]).all()
        if i == 1:  # category 7 -> class 1, on both boxes
            assert nearest_class(dets[edge], raw[i][edge]) == 1
            assert nearest_class(dets[60, 55], raw[i][60, 55]) == 1
        if i == 2:  # no detection
            assert (dets == raw[i]).all()


def test_visualize_json_results_rejects_foreign_ids(tmp_path, tiny, capsys):
    name, flags, _ = tiny
    results = _write_results(tmp_path / "results.json", [_det(0, 1, [4, 6, 26, 28], 0.9)])
    argv = ["--input", results, "--dataset", name, "--output", str(tmp_path / "vis")]
    assert _tool("visualize_json_results").main(argv + ["--coco-dataset", *flags]) == 1
    assert "category_id 1" in capsys.readouterr().err


def test_analyze_results(tmp_path, tiny):
    name, flags, _ = tiny
    results = _write_results(tmp_path / "results.json", RESULTS)
    out = tmp_path / "analysis"
    argv = ["--input", results, "--dataset", name, "--output", str(out), "--coco-dataset", *flags]
    assert _tool("analyze_results").main(argv) == 0
    width, height = Image.open(out / "confusion_matrix.png").size
    assert width > 200 and height > 200
    report = json.loads((out / "per_class.json").read_text())

    # By hand (see RESULTS): square: image 0 found, image 1's detected as a disc, image 2's
    # missed; disc: image 1's found. The 0.3 disc is below the threshold.
    expected = [[1, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert report["confusion_matrix"]["counts"] == expected
    assert report["confusion_matrix"]["labels"] == ["square", "disc", "background"]
    square, disc = report["classes"]
    assert (square["precision"], square["recall"]) == (1.0, pytest.approx(1 / 3))
    assert (disc["precision"], disc["recall"]) == (0.5, 1.0)
    assert square["detected_as"] == {"disc": 1} and square["missed"] == 1
    assert report["confusions"] == [{"ground_truth": "square", "predicted": "disc", "count": 1}]

    # The same numbers as the function's on the same data.
    metadata = MetadataCatalog.get(name)
    loaded = load_coco_results(results, metadata)
    assert confusion_matrix(DatasetCatalog.get(name), loaded, 2).tolist() == expected


def test_analyze_results_of_a_dataset_without_id_mapping(tmp_path):
    # A dataset whose dicts carry contiguous ids and whose metadata has no id mapping (as
    # atss_d2's VOC folders): the results' ids are used as they are.
    dicts = image_dicts(tmp_path / "images", num_images=2)
    results = _write_results(
        tmp_path / "results.json",
        [_det(0, 0, [4, 6, 26, 28], 0.9), _det(1, 0, [40, 30, 30, 30], 0.9)],
    )
    name = f"vis_{uuid.uuid4().hex[:8]}"
    with registered(name, dicts):
        out = tmp_path / "analysis"
        assert (
            _tool("analyze_results").main(
                ["--input", results, "--dataset", name, "--output", str(out)]
            )
            == 0
        )
    counts = json.loads((out / "per_class.json").read_text())["confusion_matrix"]["counts"]
    # image 0: square found; image 1: its disc detected as a square, its square missed.
    assert counts == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]


def _evaluate(name, dicts, detections, output_dir):
    """Run atss_d2's COCO evaluator on ``detections`` {image_id: [(class, XYXY box, score)]}
    (contiguous classes, as the model returns them); the path of the results file it writes."""
    DatasetCatalog.get(name)  # as the test loader does: sets the COCO json's id mapping
    evaluator = ATSSCOCOEvaluator(name, distributed=False, output_dir=str(output_dir))
    evaluator.reset()
    for d in dicts:
        found = detections.get(d["image_id"], [])
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor([b for _, b, _ in found]).reshape(-1, 4))
        instances.scores = torch.tensor([s for _, _, s in found])
        instances.pred_classes = torch.tensor([c for c, _, _ in found], dtype=torch.int64)
        evaluator.process([d], [{"instances": instances}])
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return str(output_dir / "coco_instances_results.json")


# Image 0: its square found; image 1: its disc found and its square detected as a disc.
EVAL_DETECTIONS = {
    0: [(SQUARE, [4.0, 6.0, 30.0, 34.0], 0.9)],
    1: [(DISC, [40.0, 30.0, 70.0, 60.0], 0.8), (DISC, [7.0, 6.0, 33.0, 34.0], 0.7)],
}
EVAL_COUNTS = [[1, 1, 1], [0, 1, 0], [0, 0, 0]]  # image 2's square missed


def test_reads_what_the_coco_evaluator_writes_for_a_coco_json(tmp_path, tiny):
    name, flags, _ = tiny
    register_datasets_from_args(coco=[flags])
    results = _evaluate(name, DatasetCatalog.get(name), EVAL_DETECTIONS, tmp_path / "eval")
    written = {r["category_id"] for r in json.loads(Path(results).read_text())}
    assert written == {3, 7}  # the json's own ids, mapped back by the evaluator
    out = tmp_path / "analysis"
    argv = ["--input", results, "--dataset", name, "--output", str(out)]
    assert _tool("analyze_results").main(argv) == 0
    assert json.loads((out / "per_class.json").read_text())["confusion_matrix"]["counts"] == (
        EVAL_COUNTS
    )


def test_reads_what_the_coco_evaluator_writes_without_id_mapping(tmp_path):
    # atss_d2's VOC folders: contiguous ids, no mapping; the evaluator converts the dicts to a
    # COCO json with categories 0..K-1 and writes the contiguous ids.
    dicts = image_dicts(tmp_path / "images", num_images=3)
    name = f"vis_{uuid.uuid4().hex[:8]}"
    with registered(name, dicts, evaluator_type="coco"):
        results = _evaluate(name, dicts, EVAL_DETECTIONS, tmp_path / "eval")
        written = {r["category_id"] for r in json.loads(Path(results).read_text())}
        assert written == {0, 1}
        out = tmp_path / "vis"
        argv = ["--input", results, "--dataset", name, "--output", str(out)]
        assert _tool("visualize_json_results").main(argv) == 0
        assert len(list(out.iterdir())) == 3
        out = tmp_path / "analysis"
        argv = ["--input", results, "--dataset", name, "--output", str(out)]
        assert _tool("analyze_results").main(argv) == 0
    counts = json.loads((out / "per_class.json").read_text())["confusion_matrix"]["counts"]
    assert counts == EVAL_COUNTS
