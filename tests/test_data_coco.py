"""register_coco_dataset checks a COCO json before registering it; errors name the problem."""

import json
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from atss_d2.data import register_coco_dataset


def _coco():
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 40}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip


@pytest.fixture
def dataset(tmp_path):
    """A valid one-image COCO dataset: (json path, image dir)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(image_dir / "a.png")
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps(_coco()))
    return json_file, image_dir


def _name():
    return f"coco_test_{uuid.uuid4().hex[:8]}"


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_valid_dataset_registers_and_loads(dataset):
    json_file, image_dir = dataset
    name = _name()
    register_coco_dataset(name, str(json_file), str(image_dir))
    # The class names are known before the dataset is loaded (NUM_CLASSES checks, demo labels).
    assert MetadataCatalog.get(name).thing_classes == ["thing"]
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 1 and dicts[0]["annotations"][0]["bbox"] == [2, 3, 10, 12]
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["thing"] and meta.evaluator_type == "coco"
    # The same arguments again: nothing happens.
    register_coco_dataset(name, str(json_file), str(image_dir))
    # The same name for other files: refused, naming the dataset.
    other = _write(json_file.parent / "other.json", _coco())
    with pytest.raises(ValueError, match=name):
        register_coco_dataset(name, str(other), str(image_dir))


def test_missing_json_file(dataset, tmp_path):
    _, image_dir = dataset
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_coco_dataset(_name(), str(missing), str(image_dir))


def test_missing_image_dir(dataset, tmp_path):
    json_file, _ = dataset
    with pytest.raises(FileNotFoundError, match="no_images_here"):
        register_coco_dataset(_name(), str(json_file), str(tmp_path / "no_images_here"))


def test_malformed_json_names_file_and_line(dataset):
    json_file, image_dir = dataset
    json_file.write_text('{"images": [],\n "categories": [}\n')
    with pytest.raises(ValueError, match=r"train\.json: malformed JSON at line 2"):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_missing_top_level_key(dataset):
    json_file, image_dir = dataset
    data = _coco()
    del data["categories"]
    _write(json_file, data)
    message = r"train\.json: missing the required top-level key 'categories'"
    with pytest.raises(ValueError, match=message):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_annotation_missing_key(dataset):
    json_file, image_dir = dataset
    data = _coco()
    del data["annotations"][0]["bbox"]
    _write(json_file, data)
    message = r"annotations\[0\] \(id 7\) lacks the required key\(s\) \['bbox'\]"
    with pytest.raises(ValueError, match=message):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_undeclared_category_names_annotation_and_file(dataset):
    json_file, image_dir = dataset
    data = _coco()
    data["annotations"][0]["category_id"] = 5
    _write(json_file, data)
    name = _name()
    with pytest.raises(ValueError, match=r"train\.json: annotation id 7 has category_id 5"):
        register_coco_dataset(name, str(json_file), str(image_dir))
    assert name not in DatasetCatalog.list()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(image_id=9), "annotation id 7 has image_id 9"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "annotation id 7 has bbox"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 7 has bbox"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate id 1 in 'images'"),
        (lambda d: d.update(categories=[]), "'categories' is empty"),
        (lambda d: d.update(images={}), "'images' must be a list"),
        (lambda d: d.update(images=[], annotations=[]), "'images' is empty"),
        # detectron2's load_coco_json asserts on it; "ignore": 0 passes (the loader accepts it).
        (lambda d: d["annotations"][0].update(ignore=1), 'annotation id 7 has "ignore": 1'),
        (
            lambda d: (
                d["categories"].append({"id": 3, "name": "thing"}),
                d["annotations"].append(dict(d["annotations"][0], id=8, category_id=3)),
            ),
            "categories 1 and 3 are both named 'thing' and both have annotations",
        ),
    ],
)
def test_other_inconsistencies(dataset, change, message):
    json_file, image_dir = dataset
    data = _coco()
    change(data)
    _write(json_file, data)
    with pytest.raises(ValueError, match=message):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_top_level_not_an_object(dataset):
    json_file, image_dir = dataset
    _write(json_file, [1, 2])
    with pytest.raises(ValueError, match="top level must be a JSON object"):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_byte_order_mark_is_named_with_the_fix(dataset):
    json_file, image_dir = dataset
    json_file.write_bytes(b"\xef\xbb\xbf" + json.dumps(_coco()).encode())
    with pytest.raises(ValueError, match="starts with a UTF-8 byte order mark.*without BOM"):
        register_coco_dataset(_name(), str(json_file), str(image_dir))


def test_classes_option_is_for_voc_folders(dataset):
    from atss_d2.data import register_datasets_from_args

    json_file, image_dir = dataset
    name = _name()
    with pytest.raises(ValueError, match="--classes names the classes of --voc-dataset"):
        register_datasets_from_args([(name, str(json_file), str(image_dir))], None, "a,b")
    assert name not in DatasetCatalog.list()


def test_an_unused_category_may_repeat_a_name(dataset):
    """Roboflow's exports: category 0 is the project (no boxes), here named as its class."""
    json_file, image_dir = dataset
    data = _coco()
    data["categories"] = [{"id": 0, "name": "thing", "supercategory": "none"},
                          {"id": 1, "name": "thing", "supercategory": "thing"}]  # fmt: skip
    _write(json_file, data)
    name = _name()
    register_coco_dataset(name, str(json_file), str(image_dir))
    assert MetadataCatalog.get(name).thing_classes == ["thing", "thing"]
