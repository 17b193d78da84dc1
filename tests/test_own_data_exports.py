"""
Datasets as annotation tools export them (CVAT, Roboflow, Label Studio, labelImg), registered
with ``--coco-dataset`` / ``--voc-dataset`` semantics: what training, evaluation and the demo
get from them.
"""

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image
from tiny_setup import tiny_cfg

from atss_d2.data import (
    VOCAnnotationError,
    register_coco_dataset,
    register_datasets_from_args,
    register_voc_dataset,
)
from atss_d2.data.mapper import ATSSDatasetMapper
from atss_d2.evaluation import ATSSCOCOEvaluator


def _name():
    return f"own_data_{uuid.uuid4().hex[:8]}"


def _image(path, width=80, height=64, boxes=(), color=(230, 200, 40)):
    """Dark noise with a bright filled rectangle per XYWH box; the upright image."""
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    for x, y, w, h in boxes:
        pixels[y : y + h, x : x + w] = color
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


def _coco(file_names, boxes, categories=({"id": 1, "name": "cat"},), first_id=1):
    """A json of 80x64 images named ``file_names``; ``boxes``: per image, (category id, XYWH)."""
    images = [
        {"id": first_id + i, "file_name": n, "width": 80, "height": 64}
        for i, n in enumerate(file_names)
    ]
    annotations = []
    for i, image_boxes in enumerate(boxes):
        for category, bbox in image_boxes:
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": first_id + i,
                    "category_id": category,
                    "bbox": list(bbox),
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    return {"images": images, "annotations": annotations, "categories": list(categories)}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _perfect_detections_ap(name, output_dir, detections):
    """COCO AP of ``detections`` ({image id: [(contiguous class, XYXY box)]}) on ``name``."""
    evaluator = ATSSCOCOEvaluator(name, output_dir=str(output_dir), distributed=False)
    evaluator.reset()
    for image_id, found in detections.items():
        instances = Instances((64, 80))
        instances.pred_boxes = Boxes(torch.tensor([b for _, b in found], dtype=torch.float32))
        instances.scores = torch.full((len(found),), 0.9)
        instances.pred_classes = torch.tensor([c for c, _ in found], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


# -- COCO ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "segmentation", [[[]], [[10, 10, 40, 40]], [], {"size": [64, 80], "counts": [700, 20, 4400]}]
)
def test_boxes_are_kept_whatever_their_segmentation(tmp_path, segmentation):
    # A box detector trains on "bbox": an empty polygon list, a polygon of two points (a box's
    # corners), no polygon, or an RLE mask all leave the box as written.
    _image(tmp_path / "images" / "a.jpg", boxes=[(10, 12, 30, 20)])
    data = _coco(["a.jpg"], [[(1, (10, 12, 30, 20)), (1, (50, 30, 20, 20))]])
    for ann in data["annotations"]:
        ann["segmentation"] = segmentation
    name = _name()
    register_coco_dataset(name, _write(tmp_path / "a.json", data), tmp_path / "images")
    (record,) = DatasetCatalog.get(name)
    assert [a["bbox"] for a in record["annotations"]] == [[10, 12, 30, 20], [50, 30, 20, 20]]
    assert all("segmentation" not in a for a in record["annotations"])


def test_an_image_listed_twice_is_an_error(tmp_path):
    # Two entries for one file would split its boxes between two "images".
    _image(tmp_path / "images" / "a.jpg")
    data = _coco(["a.jpg", "./a.jpg"], [[(1, (10, 12, 30, 20))], [(1, (50, 30, 20, 20))]])
    with pytest.raises(ValueError, match=r"images 1 and 2 both have file_name '\./a\.jpg'"):
        register_coco_dataset(_name(), _write(tmp_path / "a.json", data), tmp_path / "images")


def _label_studio(tmp_path, file_names):
    """Label Studio's COCO export: category and annotation ids from 0, its own file names;
    the photos as the user has them, in photos/."""
    for stem in ("photo0", "photo1"):
        _image(tmp_path / "photos" / f"{stem}.jpg", boxes=[(10, 12, 30, 20)])
    data = _coco(
        file_names,
        [[(0, (10, 12, 30, 20))], [(0, (10, 12, 30, 20))]],
        categories=[{"id": 0, "name": "cat"}],
        first_id=0,
    )
    for ann in data["annotations"]:
        ann["ignore"] = 0
    return _write(tmp_path / "export" / "result.json", data), tmp_path / "photos"


def test_label_studio_server_paths_are_found_by_base_name(tmp_path, caplog):
    # "/data/upload/<project>/<8 hex digits>-<name>": the photo as uploaded, photo0.jpg; and a
    # Windows path of a file kept under its own name.
    json_file, photos = _label_studio(
        tmp_path, ["/data/upload/1/3f2a9c1e-photo0.jpg", "C:\\Users\\me\\photo1.jpg"]
    )
    name = _name()
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        register_coco_dataset(name, json_file, photos)
    assert "2 of the 2 images" in caplog.text and "found by their base name" in caplog.text
    assert MetadataCatalog.get(name).get("missing_images") is None
    records = DatasetCatalog.get(name)
    assert [r["file_name"] for r in records] == [
        str(photos / "photo0.jpg"),
        str(photos / "photo1.jpg"),
    ]
    # Class id 0 and annotation ids from 0: perfect boxes (XYWH (10, 12, 30, 20) -> XYXY
    # (10, 12, 40, 32)) on both images give AP 100.
    detections = {0: [(0, (10, 12, 40, 32))], 1: [(0, (10, 12, 40, 32))]}
    assert _perfect_detections_ap(name, tmp_path / "eval", detections)["AP"] == pytest.approx(100)


def test_two_server_paths_of_one_file_are_an_error(tmp_path):
    json_file, photos = _label_studio(
        tmp_path, ["/data/upload/1/3f2a9c1e-photo0.jpg", "/data/upload/2/photo0.jpg"]
    )
    with pytest.raises(ValueError, match=r"images 0 and 1 are both the file .*photo0\.jpg"):
        register_coco_dataset(_name(), json_file, photos)


def test_relative_names_are_not_rewritten_and_the_fix_is_named(tmp_path):
    # "images/<prefix>-photo0.jpg" is relative to the export; the photos sit elsewhere under
    # their own names. Nothing is guessed: the message names the file looked for and the fix.
    json_file, photos = _label_studio(
        tmp_path, ["images/3f2a9c1e-photo0.jpg", "images/0b1c2d3e-photo1.jpg"]
    )
    name = _name()
    register_coco_dataset(name, json_file, photos)
    message = MetadataCatalog.get(name).missing_images
    assert "2 of the 2 images" in message
    assert str(photos / "images" / "3f2a9c1e-photo0.jpg") in message
    assert str(photos / "photo0.jpg") in message and "upload prefix '3f2a9c1e-'" in message
    assert "'photo0.jpg' for 'images/3f2a9c1e-photo0.jpg'" in message


@pytest.mark.parametrize("key", ["empty", "absent"])
def test_a_split_without_annotations_says_its_ap_is_undefined(tmp_path, caplog, key):
    # Roboflow's test split exported without labels: the categories, the images, no boxes
    # ("annotations": []); or, as COCO's test-dev, no "annotations" key.
    _image(tmp_path / "test" / "a.jpg")
    data = _coco(
        ["a.jpg"],
        [[]],
        categories=[
            {"id": 0, "name": "pets", "supercategory": "none"},
            {"id": 1, "name": "cat", "supercategory": "pets"},
        ],
    )
    if key == "absent":
        del data["annotations"]
    name = _name()
    with caplog.at_level(logging.WARNING):
        register_coco_dataset(name, _write(tmp_path / "test" / "_annotations.coco.json", data),
                              tmp_path / "test")  # fmt: skip
        evaluator = ATSSCOCOEvaluator(name, output_dir=str(tmp_path / "eval"), distributed=False)
        evaluator.reset()
        instances = Instances((64, 80))
        instances.pred_boxes = Boxes(torch.tensor([[10.0, 12.0, 40.0, 32.0]]))
        instances.scores = torch.tensor([0.9])
        instances.pred_classes = torch.tensor([1])
        evaluator.process([{"image_id": 1}], [{"instances": instances}])
        results = evaluator.evaluate()
    assert "has no annotations" in caplog.text
    assert "has no ground-truth boxes" in caplog.text
    if key == "empty":
        assert "print as NaN" in caplog.text and math.isnan(results["bbox"]["AP"])
    else:
        assert "only the detections are written" in caplog.text and "bbox" not in results
        assert (tmp_path / "eval" / "coco_instances_results.json").is_file()


@pytest.mark.parametrize("flag", ["coco", "voc"])
def test_a_yolo_folder_given_for_coco_or_voc_names_the_format_found(tmp_path, flag):
    for i in range(2):
        _image(tmp_path / "yolo" / "images" / f"{i}.jpg")
        label = tmp_path / "yolo" / "labels" / f"{i}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.25 0.3\n1 0.2 0.3 0.1 0.1\n")
    (tmp_path / "yolo" / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    triple = [_name(), str(tmp_path / "yolo" / "labels"), str(tmp_path / "yolo" / "images")]
    with pytest.raises(ValueError) as error:
        register_datasets_from_args(**{flag: [triple]})
    expected = "a COCO json file" if flag == "coco" else "one Pascal VOC XML file per image"
    assert expected in str(error.value)
    assert "YOLO labels" in str(error.value) and "0.txt" in str(error.value)
    if flag == "coco":  # the dataset's .yaml given as the json
        triple[1] = str(tmp_path / "yolo" / "data.yaml")
        with pytest.raises(ValueError, match="YOLO file"):
            register_datasets_from_args(coco=[triple])


def test_a_roboflow_folder_given_as_the_json_names_the_json_in_it(tmp_path):
    _image(tmp_path / "train" / "a.jpg")
    _write(tmp_path / "train" / "_annotations.coco.json", _coco(["a.jpg"], [[]]))
    with pytest.raises(ValueError, match=r"give a COCO json itself .*_annotations\.coco\.json"):
        register_coco_dataset(_name(), tmp_path / "train", tmp_path / "train")


def test_exif_rotated_photo_boxes_land_on_the_object(tmp_path):
    # CVAT and Label Studio show the photo upright and write its upright size and boxes. The
    # photo is stored turned (EXIF orientation 6: shown after a 90-degree clockwise turn); the
    # training image must have the object inside its box.
    upright = _image(tmp_path / "upright.png", boxes=[(8, 10, 30, 20)])
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 64 x 80 as stored
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "IMG_0001.JPG", exif=exif.tobytes(), quality=95)
    data = _coco(["IMG_0001.JPG"], [[(1, (8, 10, 30, 20))]])
    name = _name()
    register_coco_dataset(name, _write(tmp_path / "a.json", data), tmp_path / "images")
    cfg = tiny_cfg(tmp_path / "out", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80")
    mapped = ATSSDatasetMapper(cfg, is_train=True)(DatasetCatalog.get(name)[0])
    image = mapped["image"].float()  # (3, 64, 80), the size as loaded (upright)
    assert tuple(image.shape[1:]) == (64, 80)
    x0, y0, x1, y1 = mapped["instances"].gt_boxes.tensor[0].round().int().tolist()
    assert (x0, y0, x1, y1) == (8, 10, 38, 30)
    assert image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean() > 150  # the bright object
    assert image[:, y1 + 2 :, :].mean() < 60  # dark below it


# -- VOC -------------------------------------------------------------------------------------


def _voc_xml(filename, objects, namespace=None):
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    body = "".join(
        f"<object><name>{name}</name><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
        "</object>"
        for name, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation{xmlns}><filename>{filename}</filename><size><width>80</width>"
        f"<height>64</height><depth>3</depth></size>{body}</annotation>"
    )


def _voc_folder(root, xmls):
    for stem, (filename, objects, namespace) in xmls.items():
        _image(root / "JPEGImages" / filename)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(filename, objects, namespace))
    return root / "Annotations", root / "JPEGImages"


def test_xml_with_a_namespace_reads_as_plain_voc(tmp_path):
    ann_dir, img_dir = _voc_folder(
        tmp_path, {"a": ("a.jpg", [("cat", (11, 13, 40, 32.5))], "http://example.org/voc")}
    )
    name = _name()
    register_voc_dataset(name, ann_dir, img_dir)
    (record,) = DatasetCatalog.get(name)
    # VOC's 1-based (11, 13, 40, 32.5) -> (10, 12, 40, 32.5).
    assert [a["bbox"] for a in record["annotations"]] == [[10.0, 12.0, 40.0, 32.5]]
    assert MetadataCatalog.get(name).thing_classes == ["cat"]


def test_class_names_differing_in_case_or_spaces_are_an_error(tmp_path):
    # "Cat" in one file and "cat" (written "cat " by hand) in another would be two classes.
    xmls = {
        "a": ("a.jpg", [("Cat", (11, 13, 40, 32))], None),
        "b": ("b.jpg", [("cat ", (11, 13, 40, 32)), ("dog", (41, 13, 70, 32))], None),
    }
    ann_dir, img_dir = _voc_folder(tmp_path / "train", xmls)
    with pytest.raises(VOCAnnotationError, match=r"'Cat' \(e\.g\. .*a\.xml\), 'cat' .*case"):
        register_voc_dataset(_name(), ann_dir, img_dir)
    # Across a train and a val folder too (their union is the class list).
    val = _voc_folder(tmp_path / "val", {"c": ("c.jpg", [("CAT", (11, 13, 40, 32))], None)})
    good = _voc_folder(tmp_path / "train2", {"d": ("d.jpg", [("cat", (11, 13, 40, 32))], None)})
    with pytest.raises(VOCAnnotationError, match="'CAT'.*'cat'"):
        register_datasets_from_args(voc=[[_name(), *map(str, good)], [_name(), *map(str, val)]])
    # Named in the class list, they are two classes on purpose.
    name = _name()
    register_voc_dataset(name, ann_dir, img_dir, classes=["Cat", "cat", "dog"])
    ids = [[a["category_id"] for a in r["annotations"]] for r in DatasetCatalog.get(name)]
    assert ids == [[0], [1, 2]]


def test_xml_files_in_subfolders_are_read_with_their_images(tmp_path, caplog):
    # CVAT keeps the folders of the images' names: Annotations/set1/b.xml for set1/b.jpg; an
    # image without XML (labelImg writes none for an image left without boxes) is named.
    ann_dir, img_dir = tmp_path / "Annotations", tmp_path / "JPEGImages"
    for stem, filename in (("a", "a.jpg"), ("set1/b", "set1/b.jpg"), ("set1/c", "c.jpg")):
        _image(img_dir / (filename if "/" in filename else f"{stem}.jpg"))
        xml = ann_dir / f"{stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(_voc_xml(filename, [("cat", (11, 13, 40, 32))]))
    _image(img_dir / "negative.png")
    name = _name()
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        register_voc_dataset(name, ann_dir, img_dir)
    # set1/c.xml names "c.jpg", which is not there: the XML's own path gives set1/c.jpg.
    assert [r["file_name"] for r in DatasetCatalog.get(name)] == [
        str(img_dir / "a.jpg"),
        str(img_dir / "set1" / "b.jpg"),
        str(img_dir / "set1" / "c.jpg"),
    ]
    assert "1 image(s) in" in caplog.text and "negative.png" in caplog.text


def test_label_studio_upload_prefix_in_filename_finds_the_photo(tmp_path):
    ann_dir, img_dir = tmp_path / "Annotations", tmp_path / "images"
    _image(img_dir / "photo.jpg")
    ann_dir.mkdir()
    (ann_dir / "task_7.xml").write_text(_voc_xml("3f2a9c1e-photo.jpg", [("cat", (11, 13, 40, 32))]))
    name = _name()
    register_voc_dataset(name, ann_dir, img_dir)
    assert [r["file_name"] for r in DatasetCatalog.get(name)] == [str(img_dir / "photo.jpg")]


def test_a_polygon_without_bbox_is_an_error_that_says_so(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    data = _coco(["a.jpg"], [[(1, (10, 12, 30, 20))]])
    del data["annotations"][0]["bbox"]
    data["annotations"][0]["segmentation"] = [[10, 12, 40, 12, 40, 32, 10, 32]]
    with pytest.raises(ValueError, match=r"\(id 1\) lacks the required key\(s\) \['bbox'\]; it has "
                       "only a 'segmentation'"):  # fmt: skip
        register_coco_dataset(_name(), _write(tmp_path / "a.json", data), tmp_path / "images")


def test_urls_and_label_studio_local_files_are_found_by_base_name(tmp_path):
    json_file, photos = _label_studio(
        tmp_path,
        ["s3://bucket/raw/photo0.jpg?X-Amz-Signature=abc", "/data/local-files/?d=x/photo1.jpg"],
    )
    name = _name()
    register_coco_dataset(name, json_file, photos)
    assert [r["file_name"] for r in DatasetCatalog.get(name)] == [
        str(photos / "photo0.jpg"),
        str(photos / "photo1.jpg"),
    ]


def test_a_file_name_of_another_case_is_named(tmp_path):
    _image(tmp_path / "images" / "IMG_1.JPG")
    data = _coco(["IMG_1.jpg"], [[(1, (10, 12, 30, 20))]])
    name = _name()
    register_coco_dataset(name, _write(tmp_path / "a.json", data), tmp_path / "images")
    message = MetadataCatalog.get(name).missing_images
    assert str(tmp_path / "images" / "IMG_1.JPG") in message and "case differs" in message


def test_cvat_rotated_rectangles_are_counted_in_a_warning(tmp_path, caplog):
    _image(tmp_path / "images" / "a.jpg")
    data = _coco(["a.jpg"], [[(1, (10, 12, 30, 20)), (1, (50, 30, 20, 20)), (1, (5, 5, 9, 9))]])
    for ann, angle in zip(data["annotations"], (0.0, 30.0, 180.0)):  # 180 degrees: the same box
        ann["attributes"] = {"occluded": False, "rotation": angle}
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        register_coco_dataset(_name(), _write(tmp_path / "a.json", data), tmp_path / "images")
    assert "1 box(es)" in caplog.text and "rotated rectangles" in caplog.text
    assert "annotation id 2" in caplog.text


def test_a_format_given_to_the_other_flag_is_named(tmp_path):
    # A COCO json as the VOC annotations folder, a VOC folder as the COCO json, and CVAT's own
    # "CVAT for images" XML (all images in one <annotations> file) as a VOC folder.
    json_file = _write(tmp_path / "coco" / "instances_default.json", _coco(["a.jpg"], [[]]))
    with pytest.raises(VOCAnnotationError, match="is a file; .*goes to --coco-dataset"):
        register_voc_dataset(_name(), json_file, tmp_path)
    ann_dir, img_dir = _voc_folder(tmp_path / "voc", {"a": ("a.jpg", [], None)})
    with pytest.raises(ValueError, match="holds XML files .*use --voc-dataset"):
        register_coco_dataset(_name(), ann_dir, img_dir)
    cvat = tmp_path / "cvat"
    cvat.mkdir()
    (cvat / "annotations.xml").write_text("<annotations><version>1.1</version></annotations>")
    with pytest.raises(VOCAnnotationError, match="'CVAT for images' export; export the task as"):
        register_voc_dataset(_name(), cvat, img_dir, classes=["cat"])
