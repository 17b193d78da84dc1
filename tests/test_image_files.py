"""
Image files against their annotations, checked when a dataset is registered: a size that fits
the pixels as stored but not the image turned by its EXIF orientation (labelImg ignores the tag,
detectron2's read_image applies it), a size that fits neither, 180-degree turns that the size
cannot tell (a warning), missing COCO images (stopped by validate_config where a run needs
them), boxes outside the image, and the COCO category-id map known before loading.
"""

import json
import logging
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image
from tiny_setup import tiny_cfg

from atss_d2.data import VOCAnnotationError, load_voc_folder, register_coco_dataset
from atss_d2.data.image_size import read_image_header, size_problem
from atss_d2.demo import instances_to_coco_results
from atss_d2.engine import ConfigError, validate_config

ORIENTATION = 0x0112


def _jpeg(path, width, height, orientation=None):
    """A ``width`` x ``height`` JPEG as stored, with an EXIF orientation tag if given."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return str(path)


def _name():
    return f"image_files_{uuid.uuid4().hex[:8]}"


def test_header_gives_the_loaded_size(tmp_path):
    # Orientation 6 (turned 90 degrees) and 8 swap width and height; 1 and 3 keep them.
    for orientation, loaded in ((None, (60, 40)), (1, (60, 40)), (3, (60, 40)), (6, (40, 60))):
        path = _jpeg(tmp_path / f"o{orientation}.jpg", 60, 40, orientation)
        header = read_image_header(path)
        assert (header.width, header.height) == (60, 40)
        assert header.orientation == (orientation or 1)
        assert header.size == loaded
        # The check agrees with what PIL's exif_transpose (the mapper's loader) gives.
        from PIL import ImageOps

        with Image.open(path) as image:
            assert ImageOps.exif_transpose(image).size == loaded


def test_size_problem_tells_exif_from_a_resized_image(tmp_path):
    turned = _jpeg(tmp_path / "turned.jpg", 60, 40, orientation=6)
    header = read_image_header(turned)
    assert size_problem(turned, header, 40, 60) is None  # the upright size
    stored = size_problem(turned, header, 60, 40)  # the size as stored: labelImg's
    assert "EXIF orientation 6" in stored and "40x60 when loaded" in stored
    assert "exiftool -Orientation=" in stored and turned in stored
    other = size_problem(turned, header, 120, 80)
    assert "gives 120x80" in other and "is 40x60" in other and "resized" in other

    plain = _jpeg(tmp_path / "plain.jpg", 60, 40)
    message = size_problem(plain, read_image_header(plain), 30, 20)
    assert "is 60x40" in message and "EXIF" not in message


def _voc_folder(tmp_path, image_size, xml_size, orientation=None):
    """One labelImg-style XML with one box, for a JPEG stored at ``image_size``."""
    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    img.mkdir()
    _jpeg(img / "photo.jpg", *image_size, orientation)
    width, height = xml_size
    (ann / "photo.xml").write_text(
        f"<annotation><filename>photo.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><object><name>cat</name>"
        "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>35</ymax></bndbox>"
        "</object></annotation>"
    )
    return str(ann), str(img)


def test_voc_size_of_the_stored_pixels_of_a_turned_photo_is_an_error(tmp_path):
    ann, img = _voc_folder(tmp_path, (60, 40), (60, 40), orientation=6)
    with pytest.raises(VOCAnnotationError, match="EXIF orientation 6") as e:
        load_voc_folder(ann, img)
    assert "photo.xml: <size> does not fit the image" in str(e.value)


def test_voc_upright_size_of_a_turned_photo_loads(tmp_path):
    ann, img = _voc_folder(tmp_path, (60, 40), (40, 60), orientation=6)
    (record,) = load_voc_folder(ann, img)
    assert (record["width"], record["height"]) == (40, 60)
    assert record["annotations"][0]["bbox"] == [4.0, 5.0, 30.0, 35.0]


def test_voc_size_of_another_image_is_an_error(tmp_path):
    ann, img = _voc_folder(tmp_path, (60, 40), (120, 80))
    with pytest.raises(VOCAnnotationError, match="gives 120x80.*is 60x40"):
        load_voc_folder(ann, img)


def test_voc_turned_by_180_degrees_loads_with_a_warning(tmp_path, caplog):
    ann, img = _voc_folder(tmp_path, (60, 40), (60, 40), orientation=3)
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        (record,) = load_voc_folder(ann, img)
    assert (record["width"], record["height"]) == (60, 40)
    assert "1 image(s)" in caplog.text and "180 degrees" in caplog.text
    assert "photo.jpg" in caplog.text


def test_voc_unreadable_image_with_a_size_is_left_to_the_loader(tmp_path):
    # The data loader raises on it, or skips it with DATALOADER.SKIP_UNREADABLE_IMAGES.
    ann, img = _voc_folder(tmp_path, (60, 40), (60, 40))
    (tmp_path / "JPEGImages" / "photo.jpg").write_bytes(b"not an image")
    (record,) = load_voc_folder(ann, img)
    assert (record["width"], record["height"]) == (60, 40)


def _coco(tmp_path, images, annotations=(), categories=({"id": 1, "name": "cat"},)):
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.json"
    path.write_text(
        json.dumps(
            {"images": images, "annotations": list(annotations), "categories": list(categories)}
        )
    )
    return str(path)


def _image(id, file_name, width, height):
    return {"id": id, "file_name": file_name, "width": width, "height": height}


def _box(id, image_id, bbox, category_id=1):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0}  # fmt: skip


def test_coco_size_of_the_stored_pixels_of_a_turned_photo_is_an_error(tmp_path):
    _jpeg(tmp_path / "photo.jpg", 60, 40, orientation=8)
    json_file = _coco(tmp_path, [_image(3, "photo.jpg", 60, 40)])
    name = _name()
    with pytest.raises(ValueError, match="EXIF orientation 8") as e:
        register_coco_dataset(name, json_file, str(tmp_path))
    assert json_file in str(e.value) and "image id 3 ('photo.jpg')" in str(e.value)
    assert name not in DatasetCatalog.list()
    # The upright size registers.
    register_coco_dataset(name, _coco(tmp_path, [_image(3, "photo.jpg", 40, 60)]), str(tmp_path))
    assert name in DatasetCatalog.list()


def test_coco_boxes_must_lie_inside_their_image(tmp_path, caplog):
    _jpeg(tmp_path / "a.jpg", 60, 40)
    images = [_image(1, "a.jpg", 60, 40)]
    # Up to 1 px over the edge is rounding (detectron2 clips it); more is an error.
    register_coco_dataset(
        _name(), _coco(tmp_path, images, [_box(1, 1, [-1, -0.5, 61, 41])]), str(tmp_path)
    )
    for bbox in ([50, 10, 12, 5], [-2, 0, 10, 10], [0, 30, 10, 11.5], [70, 50, 5, 5]):
        json_file = _coco(tmp_path, images, [_box(9, 1, bbox)])
        with pytest.raises(ValueError, match="annotation id 9 .* outside its 60x40 image"):
            register_coco_dataset(_name(), json_file, str(tmp_path))
    # A box of zero width or height: registered, with a warning on what evaluation makes of it.
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        json_file = _coco(tmp_path, images, [_box(4, 1, [5, 5, 0, 3]), _box(5, 1, [1, 1, 9, 9])])
        register_coco_dataset(_name(), json_file, str(tmp_path))
    assert "1 box(es) of" in caplog.text and "annotation id 4" in caplog.text
    for bad in ([0, 0, float("nan"), 3], [0, 0, float("inf"), 3]):
        with pytest.raises(ValueError, match="four numbers"):
            register_coco_dataset(
                _name(), _coco(tmp_path, images, [_box(9, 1, bad)]), str(tmp_path)
            )
    with pytest.raises(ValueError, match=r"image id 1 \('a.jpg'\) has width 0"):
        register_coco_dataset(_name(), _coco(tmp_path, [_image(1, "a.jpg", 0, 40)]), str(tmp_path))


def test_coco_category_id_map_is_known_before_loading(tmp_path):
    _jpeg(tmp_path / "a.jpg", 60, 40)
    categories = [{"id": 9, "name": "dog"}, {"id": 4, "name": "cat"}]
    json_file = _coco(tmp_path, [_image(1, "a.jpg", 60, 40)], [], categories)
    name = _name()
    register_coco_dataset(name, json_file, str(tmp_path))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {4: 0, 9: 1}
    # The demo's --save-json writes the dataset's own ids (without loading the dataset).
    instances = Instances((40, 60))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]]))
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([1, 0])
    results = instances_to_coco_results(instances, 0, "a.jpg", meta)
    assert [r["category_id"] for r in results] == [9, 4]
    DatasetCatalog.get(name)  # load_coco_json sets the same map: no conflict
    assert meta.thing_dataset_id_to_contiguous_id == {4: 0, 9: 1}


def test_missing_coco_images_stop_the_runs_that_need_them(tmp_path, caplog):
    # Label Studio's export: file names under "images/", the json beside that folder.
    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    for i in range(2):
        _jpeg(export / "images" / f"{i}.jpg", 60, 40)
    images = [_image(i, f"images/{i}.jpg", 60, 40) for i in range(2)]
    json_file = _coco(export, images)
    name = _name()
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        register_coco_dataset(name, json_file, str(export / "images"))
    hint = f"give IMAGE_DIR {export}"
    assert "2 of the 2 images listed" in caplog.text and hint in caplog.text

    train = ("DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()")
    with pytest.raises(ConfigError, match="SKIP_UNREADABLE_IMAGES True") as e:
        validate_config(tiny_cfg(tmp_path / "a", *train, "MODEL.ATSS.NUM_CLASSES", "1"))
    assert f"DATASETS.TRAIN names dataset '{name}'" in str(e.value) and hint in str(e.value)
    # Training may skip them; evaluation never does.
    skip = ("DATALOADER.SKIP_UNREADABLE_IMAGES", "True", "MODEL.ATSS.NUM_CLASSES", "1")
    validate_config(tiny_cfg(tmp_path / "b", *train, *skip))
    test = ("DATASETS.TEST", f"('{name}',)", *skip)
    with pytest.raises(ConfigError, match="evaluation needs every image"):
        validate_config(tiny_cfg(tmp_path / "c", *test), train=False)

    # With the folder the hint names, nothing is missing.
    fixed = _name()
    register_coco_dataset(fixed, json_file, str(export))
    assert MetadataCatalog.get(fixed).get("missing_images") is None
    validate_config(
        tiny_cfg(tmp_path / "d", "DATASETS.TEST", f"('{fixed}',)", "MODEL.ATSS.NUM_CLASSES", "1"),
        train=False,
    )


def test_unreadable_images_stop_evaluation_and_unskipped_training(tmp_path, caplog):
    """An empty file and a text file named .jpg: registration (COCO and VOC) counts them, and
    validate_config stops any evaluation, and training unless unreadable images are skipped,
    before the model is built (not at the image, after the training)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    _jpeg(images_dir / "good.jpg", 60, 40)
    (images_dir / "empty.jpg").write_bytes(b"")
    (images_dir / "text.jpg").write_text("not an image")
    names = ["good.jpg", "empty.jpg", "text.jpg"]
    coco = _name()
    json_file = _coco(tmp_path, [_image(i, n, 60, 40) for i, n in enumerate(names)])
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        register_coco_dataset(coco, json_file, str(images_dir))
    assert f"2 of the 3 images of {json_file} cannot be read as images" in caplog.text

    from atss_d2.data import register_voc_dataset

    ann_dir = tmp_path / "Annotations"
    ann_dir.mkdir()
    for n in names:
        (ann_dir / n.replace(".jpg", ".xml")).write_text(
            f"<annotation><filename>{n}</filename><size><width>60</width><height>40</height>"
            "</size><object><name>cat</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
            "<ymax>30</ymax></bndbox></object></annotation>"
        )
    voc = _name()
    register_voc_dataset(voc, str(ann_dir), str(images_dir))

    one = ("MODEL.ATSS.NUM_CLASSES", "1")
    for name in (coco, voc):
        test = tiny_cfg(tmp_path / name, "DATASETS.TEST", f"('{name}',)", *one)
        with pytest.raises(ConfigError) as info:
            validate_config(test, train=False)
        assert f"DATASETS.TEST names dataset '{name}': 2 of the 3 images of" in str(info.value)
        assert "cannot be read as images" in str(info.value)
        assert str(info.value).endswith("Replace or remove them; evaluation needs every image")
        train = ("DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", *one)
        with pytest.raises(ConfigError, match="or set DATALOADER.SKIP_UNREADABLE_IMAGES True"):
            validate_config(tiny_cfg(tmp_path / name, *train))
        skip = ("DATALOADER.SKIP_UNREADABLE_IMAGES", "True")
        validate_config(tiny_cfg(tmp_path / name, *train, *skip))
