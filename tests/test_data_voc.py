"""
Pascal VOC XML folders: class order and ids, VOC's 1-based coordinates turned into detectron2's
(xmin - 1, ymin - 1, xmax, ymax), the three ``difficult`` modes, errors that name the file,
re-registration, and the registered set trained on, evaluated (ground truth as detections: AP
100) and drawn by demo.py / compared by compare_detectors.py.
"""

import importlib.util
import json
import math
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tiny_setup import TINY_SHAPES_OPTS, draw_image, one_torch_thread, tiny_cfg, write_png

import atss_d2.demo
from atss_d2.data import (
    VOCAnnotationError,
    load_voc_folder,
    parse_class_names,
    register_datasets_from_args,
    register_voc_dataset,
)
from atss_d2.demo import ClassNamesError
from atss_d2.engine import ATSSTrainer
from atss_d2.evaluation import ATSSCOCOEvaluator

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _object(name, box, difficult=None):
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{flag}"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>"
    )


def _xml(filename, objects=(), size=(80, 64)):
    """labelImg-style XML; ``size`` (width, height), or None for no <size> element."""
    size_xml = (
        ""
        if size is None
        else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    )
    return (
        f"<annotation><folder>images</folder><filename>{filename}</filename>"
        f"<path>/home/someone/images/{filename}</path>{size_xml}<segmented>0</segmented>"
        + "".join(objects)
        + "</annotation>\n"
    )


def _image(path, width=80, height=64, boxes=()):
    return write_png(path, draw_image(height, width, boxes))


# The folder of most tests. 80x64 images (width x height); VOC boxes (xmin, ymin, xmax, ymax).
# "002.xml" sorts after "001.xml" although its image "a.png" sorts before "b.png".
FOLDER = {
    "001.xml": ("b.png", [("zebra", (11, 21, 20, 30), None), ("ant", (1, 1, 80, 64), "0")]),
    "002.xml": ("a.png", [("cat", (5.5, 6, 30, 40), "1"), ("ant", (41, 11, 70, 50), "0")]),
}


def _write_folder(root: Path, folder=FOLDER):
    """Annotations/ and JPEGImages/ under ``root``: (annotations dir, images dir)."""
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    ann_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    for xml_name, (filename, objects) in folder.items():
        _image(img_dir / filename)
        (ann_dir / xml_name).write_text(_xml(filename, [_object(*o) for o in objects]))
    return ann_dir, img_dir


@pytest.fixture
def voc(tmp_path):
    return _write_folder(tmp_path / "voc")


def _name():
    return f"voc_test_{uuid.uuid4().hex[:8]}"


def _boxes(d):
    return [(a["category_id"], a["bbox"], a["iscrowd"]) for a in d["annotations"]]


def test_sorted_union_of_class_names_and_the_minus_one_convention(voc):
    ann_dir, img_dir = voc
    dicts = load_voc_folder(ann_dir, img_dir)
    # XML order, not image order; integer ids by position.
    assert [Path(d["file_name"]).name for d in dicts] == ["b.png", "a.png"]
    assert [d["image_id"] for d in dicts] == [0, 1]
    assert [(d["width"], d["height"]) for d in dicts] == [(80, 64), (80, 64)]
    # Classes ["ant", "cat", "zebra"]: ant 0, cat 1, zebra 2. xmin and ymin lose 1, xmax and
    # ymax stay: VOC (11, 21, 20, 30) -> (10, 20, 20, 30); (1, 1, 80, 64) -> the whole image.
    assert _boxes(dicts[0]) == [(2, [10, 20, 20, 30], 0), (0, [0, 0, 80, 64], 0)]
    # cat is difficult: kept as an ignore region (iscrowd 1) by default.
    assert _boxes(dicts[1]) == [(1, [4.5, 5, 30, 40], 1), (0, [40, 10, 70, 50], 0)]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for d in dicts for a in d["annotations"])


def test_given_classes_fix_order_and_ids(voc):
    ann_dir, img_dir = voc
    dicts = load_voc_folder(ann_dir, img_dir, classes=["zebra", "cat", "ant", "bird"])
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [0, 2, 1, 2]
    name = _name()
    load_voc_folder(ann_dir, img_dir, dataset_name=name)
    assert MetadataCatalog.get(name).thing_classes == ["ant", "cat", "zebra"]


@pytest.mark.parametrize(
    "mode, second_image",
    [
        ("ignore", [(1, [4.5, 5, 30, 40], 1), (0, [40, 10, 70, 50], 0)]),
        ("drop", [(0, [40, 10, 70, 50], 0)]),
        ("keep", [(1, [4.5, 5, 30, 40], 0), (0, [40, 10, 70, 50], 0)]),
    ],
)
def test_difficult_modes(voc, mode, second_image):
    ann_dir, img_dir = voc
    name = _name()
    register_voc_dataset(name, ann_dir, img_dir, difficult=mode)
    dicts = DatasetCatalog.get(name)
    assert _boxes(dicts[1]) == second_image
    # "<difficult>0</difficult>" and no <difficult> at all are ordinary objects in every mode.
    assert _boxes(dicts[0]) == [(2, [10, 20, 20, 30], 0), (0, [0, 0, 80, 64], 0)]
    # The ids do not depend on the mode: "cat" stays a class when its only object is dropped.
    assert MetadataCatalog.get(name).thing_classes == ["ant", "cat", "zebra"]


def test_unknown_difficult_mode(voc):
    with pytest.raises(ValueError, match="difficult must be one of"):
        load_voc_folder(*voc, difficult="skip")


def test_size_read_from_the_image_when_absent_or_zero(tmp_path):
    ann_dir, img_dir = tmp_path / "ann", tmp_path / "img"
    ann_dir.mkdir()
    _image(img_dir / "wide.png", width=50, height=20)
    # A JPEG stored 40 wide, 30 high, with EXIF orientation 6 (rotate 90): loaded 30 x 40.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(img_dir / "rotated.jpg", exif=exif)
    (ann_dir / "1.xml").write_text(_xml("wide.png", [_object("a", (1, 1, 50, 20))], size=None))
    (ann_dir / "2.xml").write_text(_xml("rotated.jpg", [_object("a", (1, 1, 30, 40))], (0, 0)))
    dicts = load_voc_folder(ann_dir, img_dir)
    assert [(d["width"], d["height"]) for d in dicts] == [(50, 20), (30, 40)]


def test_image_found_without_extension_or_by_the_xml_stem(tmp_path):
    ann_dir, img_dir = tmp_path / "ann", tmp_path / "img"
    ann_dir.mkdir()
    _image(img_dir / "frame7.jpg")
    _image(img_dir / "0002.png")
    (ann_dir / "0001.xml").write_text(_xml("frame7", [_object("a", (1, 1, 9, 9))]))
    # The name of the uploaded file, not on disk: the XML's stem finds 0002.png.
    (ann_dir / "0002.xml").write_text(_xml("upload-81f2.jpg", [_object("a", (1, 1, 9, 9))]))
    dicts = load_voc_folder(ann_dir, img_dir)
    assert [Path(d["file_name"]).name for d in dicts] == ["frame7.jpg", "0002.png"]


def test_one_pixel_tolerance_is_clipped(tmp_path):
    ann_dir, img_dir = _write_folder(
        tmp_path, {"z.xml": ("z.png", [("a", (0, 0.5, 81, 65), None)])}
    )
    # (0 - 1, 0.5 - 1, 81, 65) clipped to the 80 x 64 image.
    assert _boxes(load_voc_folder(ann_dir, img_dir)[0]) == [(0, [0, 0, 80, 64], 0)]


def _write_bad(voc, text, xml_name="bad.xml"):
    ann_dir, img_dir = voc
    (ann_dir / xml_name).write_text(text)
    return ann_dir, img_dir


OBJ = _object("ant", (11, 21, 20, 30))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            # Line 3, the name of "</annotation>" (expat points there) at column 11 (from 1).
            "<annotation>\n<filename>a.png</filename>\n<object></annotation>\n",
            r"bad\.xml: malformed XML at line 3, column 11: mismatched tag",
        ),
        ("<doc><filename>a.png</filename></doc>", r"bad\.xml: the root element is <doc>"),
        (_xml("", [OBJ]), r"bad\.xml lacks <filename>"),
        (_xml("a.png", [OBJ]).replace("<name>ant</name>", ""), r"bad\.xml: object #1 lacks <name>"),
        (
            _xml("a.png", [OBJ, "<object><name>cat</name></object>"]),
            r"bad\.xml: object #2 \('cat'\) lacks <bndbox>",
        ),
        (
            _xml("a.png", [OBJ]).replace("<ymax>30</ymax>", ""),
            r"bad\.xml: object #1 \('ant'\) lacks <bndbox><ymax>",
        ),
        (
            _xml("a.png", [_object("ant", (11, "21px", 20, 30))]),
            r"bad\.xml: object #1 \('ant'\): <ymin> is '21px', not a number",
        ),
        (
            _xml("a.png", [_object("ant", (11, 21, 20, "nan"))]),
            r"bad\.xml: object #1 \('ant'\): <ymax> is 'nan', not a number",
        ),
        (
            _xml("a.png", [_object("ant", (20, 21, 19, 30))]),
            r"bad\.xml: object #1 \('ant'\): empty box \(xmin, ymin, xmax, ymax\) = "
            r"\(20, 21, 19, 30\)",
        ),
        (
            _xml("a.png", [_object("ant", (11, 30, 20, 28.5))]),
            r"bad\.xml: object #1 \('ant'\): empty box",
        ),
        # 80 x 64 image: xmax may reach 81 (1 px tolerance), not 81.5; xmin 0, not -0.5.
        (
            _xml("a.png", [_object("ant", (11, 21, 81.5, 30))]),
            r"bad\.xml: object #1 \('ant'\): box .* lies outside the 80x64 image",
        ),
        (
            _xml("a.png", [_object("ant", (-0.5, 21, 20, 30))]),
            r"bad\.xml: .* lies outside the 80x64 image",
        ),
        (
            _xml("a.png", [_object("ant", (11, 21, 20, 66))]),
            r"bad\.xml: .* lies outside the 80x64 image",
        ),
        (
            _xml("a.png", [_object("ant", (11, 21, 20, 30), "maybe")]),
            r"bad\.xml: object #1 \('ant'\): <difficult> is 'maybe'",
        ),
        (_xml("a.png", [OBJ], size=("80px", 64)), r"bad\.xml: <size><width> is '80px'"),
        (_xml("a.png", [OBJ], size=(80, "inf")), r"bad\.xml: <size><height> is 'inf'"),
    ],
)
def test_errors_name_the_xml_file(voc, text, message):
    name = _name()
    with pytest.raises(VOCAnnotationError, match=message):
        register_voc_dataset(name, *_write_bad(voc, text))
    assert name not in DatasetCatalog.list()  # nothing registered


def test_missing_image_names_the_xml_and_the_expected_path(voc):
    ann_dir, img_dir = _write_bad(voc, _xml("gone.jpg", [OBJ]), "frame.xml")
    expected = str(img_dir / "gone.jpg")
    with pytest.raises(VOCAnnotationError, match=r"frame\.xml: image not found: ") as info:
        load_voc_folder(ann_dir, img_dir)
    assert expected in str(info.value)


def test_two_xml_files_of_one_image(tmp_path):
    folder = dict(FOLDER, **{"003.xml": ("a.png", [("bee", (2, 2, 9, 9), "0")])})
    ann_dir, img_dir = _write_folder(tmp_path / "voc", folder)
    with pytest.raises(VOCAnnotationError) as info:
        load_voc_folder(ann_dir, img_dir)
    assert str(info.value) == (
        f"{ann_dir / '002.xml'} and {ann_dir / '003.xml'} both annotate {img_dir / 'a.png'} "
        "(their <filename>): one XML per image; a copied XML whose <filename> still names the "
        "original?"
    )


def test_unknown_class_names_file_object_and_allowed_names(voc):
    with pytest.raises(VOCAnnotationError) as info:
        load_voc_folder(*voc, classes=["ant", "zebra", "kat"])
    assert str(info.value).endswith(
        "002.xml: object #1 has class 'cat', which is not one of the given classes "
        "['ant', 'zebra', 'kat']; did you mean 'kat'?"
    )


def test_folder_errors(tmp_path, voc):
    ann_dir, img_dir = voc
    with pytest.raises(FileNotFoundError, match="VOC annotations directory not found: .*nowhere"):
        load_voc_folder(tmp_path / "nowhere", img_dir)
    with pytest.raises(FileNotFoundError, match="VOC image directory not found: .*no_images"):
        load_voc_folder(ann_dir, tmp_path / "no_images")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an annotation")
    with pytest.raises(VOCAnnotationError, match=r"empty: no \.xml annotation files"):
        load_voc_folder(empty, img_dir)
    # XML files without any object: no class names unless they are given.
    no_objects = tmp_path / "no_objects"
    no_objects.mkdir()
    (no_objects / "x.xml").write_text(_xml("a.png"))
    with pytest.raises(VOCAnnotationError, match="none of the 1 XML files has an <object>"):
        load_voc_folder(no_objects, img_dir)
    assert load_voc_folder(no_objects, img_dir, classes=["ant"])[0]["annotations"] == []
    with pytest.raises(ValueError, match=r"classes repeats \['ant'\]"):
        load_voc_folder(ann_dir, img_dir, classes=["ant", "ant"])
    with pytest.raises(ValueError, match="got the string"):
        load_voc_folder(ann_dir, img_dir, classes="ant,cat")


def test_registration_metadata_copies_and_re_registration(voc, tmp_path):
    ann_dir, img_dir = voc
    name = _name()
    register_voc_dataset(name, str(ann_dir), str(img_dir))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["ant", "cat", "zebra"] and meta.evaluator_type == "coco"
    assert (meta.annotations_dir, meta.images_dir) == (str(ann_dir), str(img_dir))
    assert meta.dirname == str(tmp_path / "voc") and meta.difficult == "ignore"

    # The XML files are read once, at registration; each get is a fresh copy.
    (ann_dir / "001.xml").write_text("not xml any more")
    DatasetCatalog.get(name)[0]["annotations"].clear()
    assert len(DatasetCatalog.get(name)[0]["annotations"]) == 2

    register_voc_dataset(name, str(ann_dir), str(img_dir))  # the same: nothing happens
    other_ann, other_img = _write_folder(tmp_path / "other")
    for kwargs in (
        dict(annotations_dir=other_ann, images_dir=img_dir),
        dict(annotations_dir=ann_dir, images_dir=other_img),
        dict(annotations_dir=ann_dir, images_dir=img_dir, classes=["ant", "cat", "zebra"]),
        dict(annotations_dir=ann_dir, images_dir=img_dir, difficult="drop"),
    ):
        with pytest.raises(ValueError, match=f"Dataset name '{name}' is already registered"):
            register_voc_dataset(name, **kwargs)
    # detectron2's built-in VOC split is another dataset.
    with pytest.raises(ValueError, match="'voc_2007_train' is already registered for another"):
        register_voc_dataset("voc_2007_train", other_ann, other_img)


def test_register_datasets_from_args(voc, tmp_path):
    ann_dir, img_dir = voc
    first, second = _name(), _name()
    names = register_datasets_from_args(
        voc=[[first, str(ann_dir), str(img_dir)], [second, str(ann_dir), str(img_dir)]],
        classes="zebra, cat,ant",
    )
    assert names == [first, second]
    assert MetadataCatalog.get(second).thing_classes == ["zebra", "cat", "ant"]
    assert register_datasets_from_args() == []
    with pytest.raises(ValueError, match="comma-separated names"):
        parse_class_names("cat,,dog")


# Evaluation. Small boxes (9 x 9 px and less), so that a box 1 px off scores below IoU 0.85 and
# a wrong conversion cannot reach AP 100: the detections below are derived by hand from the XML
# coordinates, not read from the loader.
EVAL_FOLDER = {
    "1.xml": ("p.png", [("ant", (11, 21, 19, 29), None), ("bee", (41, 11, 49, 19), None)]),
    "2.xml": ("q.png", [("bee", (5, 5, 13, 13), None), ("ant", (31, 31, 38, 38), "1")]),
}
# (image_id, class id, XYXY_ABS box): VOC (11, 21, 19, 29) -> (10, 20, 19, 29), and so on.
DETECTIONS = [(0, 0, (10, 20, 19, 29)), (0, 1, (40, 10, 49, 19)), (1, 1, (4, 4, 13, 13))]
DIFFICULT_DETECTION = (1, 0, (30, 30, 38, 38))


def _evaluate(name, output_dir, detections):
    evaluator = ATSSCOCOEvaluator(name, output_dir=str(output_dir))
    evaluator.reset()
    for image_id in (0, 1):
        found = [(c, box) for i, c, box in detections if i == image_id]
        instances = Instances((64, 80))
        instances.pred_boxes = Boxes(torch.tensor([b for _, b in found], dtype=torch.float32))
        instances.scores = torch.full((len(found),), 0.9)
        instances.pred_classes = torch.tensor([c for c, _ in found], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def test_hand_derived_detections_give_ap_100(tmp_path):
    ann_dir, img_dir = _write_folder(tmp_path / "voc", EVAL_FOLDER)
    name = _name()
    register_voc_dataset(name, ann_dir, img_dir)
    out = tmp_path / "inference"
    assert _evaluate(name, out, DETECTIONS)["AP"] == pytest.approx(100.0)
    # The COCO json of the VOC dicts is in the output folder (its name carries a digest of the
    # annotations): XYWH boxes, category ids 0 and 1 (no id mapping), the difficult box a
    # crowd region.
    (converted,) = out.glob(f"{name}_coco_format_*.json")
    with open(converted) as f:
        coco = json.load(f)
    assert [c["name"] for c in coco["categories"]] == ["ant", "bee"]
    annotations = [
        (a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]
    ]
    assert annotations == [
        (0, 0, [10, 20, 9, 9], 0),
        (0, 1, [40, 10, 9, 9], 0),
        (1, 1, [4, 4, 9, 9], 0),
        (1, 0, [30, 30, 8, 8], 1),
    ]
    # A detection on the difficult ("ignore") object is neither right nor wrong.
    assert _evaluate(name, out, DETECTIONS + [DIFFICULT_DETECTION])["AP"] == pytest.approx(100.0)
    # Boxes 1 px off, as without the -1 on xmin and ymin: the IoU of a 9 x 9 box with its
    # 8 x 8 part is 64 / 81 = 0.79, below the thresholds 0.80 ... 0.95 of COCO AP.
    shifted = [(i, c, (x0 + 1, y0 + 1, x1, y1)) for i, c, (x0, y0, x1, y1) in DETECTIONS]
    assert _evaluate(name, tmp_path / "shifted", shifted)["AP"] < 100.0

    # "keep": the difficult object must be found; without its detection ant's recall is 1/2.
    kept = _name()
    register_voc_dataset(kept, ann_dir, img_dir, difficult="keep")
    assert _evaluate(kept, tmp_path / "keep", DETECTIONS)["AP"] < 100.0
    found_all = _evaluate(kept, tmp_path / "keep", DETECTIONS + [DIFFICULT_DETECTION])
    assert found_all["AP"] == pytest.approx(100.0)


# A folder to train on: 80x64 images with the objects drawn, three classes.
TRAIN_FOLDER = {
    f"{i:03d}.xml": (
        f"img{i}.png",
        [("cat", (5 + 3 * i, 7, 30 + 3 * i, 34), None), ("dog", (41, 31, 70, 60), str(i % 2))]
        + ([("emu", (10, 40, 25, 60), None)] if i % 2 else []),
    )
    for i in range(4)
}


@pytest.fixture
def train_voc(tmp_path):
    ann_dir, img_dir = tmp_path / "Annotations", tmp_path / "images"
    ann_dir.mkdir()
    for xml_name, (filename, objects) in TRAIN_FOLDER.items():
        _image(img_dir / filename, boxes=[box for _, box, _ in objects])
        (ann_dir / xml_name).write_text(_xml(filename, [_object(*o) for o in objects]))
    return ann_dir, img_dir


def test_trains_and_evaluates(train_voc, tmp_path):
    name = _name()
    register_voc_dataset(name, *train_voc)
    cfg = tiny_cfg(
        tmp_path / "out",
        "DATASETS.TRAIN", f"('{name}',)",
        "DATASETS.TEST", f"('{name}',)",
        "MODEL.ATSS.NUM_CLASSES", "3",
        "SOLVER.MAX_ITER", "2",
    )  # fmt: skip
    trainer = ATSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    ap = trainer._last_eval_results["bbox"]["AP"]  # EvalHook at the end (TEST.EVAL_PERIOD 0)
    assert math.isfinite(ap) and 0.0 <= ap <= 100.0
    assert len(list((tmp_path / "out" / "inference").glob(f"{name}_coco_format_*.json"))) == 1


def _script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "classes, names", [(None, ["cat", "dog", "emu"]), ("emu,cat,dog", ["emu", "cat", "dog"])]
)
def test_demo_labels_detections_with_the_voc_class_names(
    train_voc, tmp_path, monkeypatch, classes, names
):
    demo = _script(REPO / "demo" / "demo.py")
    drawn = {"classes": [], "labels": []}

    class RecordingVisualizer(Visualizer):
        def draw_instance_predictions(self, predictions):
            drawn["classes"] += predictions.pred_classes.tolist()
            return super().draw_instance_predictions(predictions)

        def overlay_instances(self, *, labels=None, **kwargs):
            drawn["labels"] += labels or []
            return super().overlay_instances(labels=labels, **kwargs)

    monkeypatch.setattr(atss_d2.demo, "Visualizer", RecordingVisualizer)  # where it draws
    name = _name()
    outs = demo.main([
        "--config-file", str(SHAPES_CONFIG),
        "--voc-dataset", name, *map(str, train_voc),
        *(["--classes", classes] if classes else []),
        "--input", str(train_voc[1] / "img0.png"),
        "--output", str(tmp_path / "out"),
        "--confidence-threshold", "0",  # an untrained model: every candidate is drawn
        "--opts", "MODEL.WEIGHTS", "", "MODEL.ATSS.NUM_CLASSES", "3",
        "TEST.DETECTIONS_PER_IMAGE", "20",
    ])  # fmt: skip
    assert len(outs) == 1 and Path(outs[0]).is_file()
    assert len(drawn["classes"]) == 20 and len(drawn["labels"]) == 20
    # "dog 1%": the name of the class id, in the folder's order or the given one.
    assert [label.split(" ")[0] for label in drawn["labels"]] == [
        names[c] for c in drawn["classes"]
    ]


def test_demo_refuses_class_names_of_another_number(train_voc, tmp_path):
    demo = _script(REPO / "demo" / "demo.py")
    name = _name()
    message = (
        rf"dataset '{name}' has 3 class names \['cat', 'dog', 'emu'\], but the model has "
        r"MODEL\.ATSS\.NUM_CLASSES 2"
    )
    with pytest.raises(ClassNamesError, match=message):
        demo.main([
            "--config-file", str(SHAPES_CONFIG),
            "--voc-dataset", name, *map(str, train_voc),
            "--input", str(train_voc[1] / "img0.png"),
            "--output", str(tmp_path / "out"),
            "--opts", "MODEL.WEIGHTS", "", "MODEL.ATSS.NUM_CLASSES", "2",
        ])  # fmt: skip


def test_compare_detectors_trains_on_a_voc_dataset(train_voc, tmp_path):
    tool = _script(REPO / "tools" / "compare_detectors.py")
    name = _name()
    report = tool.main([
        "--voc-dataset", name, *map(str, train_voc),
        "--classes", "emu,dog,cat",
        "--models", "atss",
        "--train-datasets", name,
        "--test-dataset", name,
        "--iters", "1",
        "--out", str(tmp_path),
        *TINY_SHAPES_OPTS,
        "MODEL.ATSS.NUM_CLASSES", "3",
    ])  # fmt: skip
    assert MetadataCatalog.get(name).thing_classes == ["emu", "dog", "cat"]
    (row,) = report["results"]
    assert row["model"] == "atss" and row["iters"] == 1 and math.isfinite(row["AP"])


def test_train_and_val_folders_share_the_class_ids(tmp_path):
    # The val folder lacks "zebra": each folder's own union would give "cat" id 1 in train
    # and id 0 in val. Registered together, both use the union ["ant", "cat", "zebra"].
    train = _write_folder(tmp_path / "train")
    val = _write_folder(tmp_path / "val", {"003.xml": ("c.png", [("cat", (5, 6, 30, 40), None)])})
    first, second = _name(), _name()
    register_datasets_from_args(voc=[[first, *map(str, train)], [second, *map(str, val)]])
    assert MetadataCatalog.get(first).thing_classes == ["ant", "cat", "zebra"]
    assert MetadataCatalog.get(second).thing_classes == ["ant", "cat", "zebra"]
    (cat,) = DatasetCatalog.get(second)[0]["annotations"]
    assert cat["category_id"] == 1


def test_a_box_one_pixel_wide_is_valid(tmp_path):
    # VOC pixels are inclusive: xmin == xmax == 20 is the 20th column, [19, 20) in detectron2's
    # continuous coordinates.
    ann_dir, img_dir = _write_folder(
        tmp_path, {"001.xml": ("a.png", [("ant", (20, 21, 20, 30), None)])}
    )
    (d,) = load_voc_folder(ann_dir, img_dir)
    assert d["annotations"][0]["bbox"] == [19.0, 20.0, 20.0, 30.0]
