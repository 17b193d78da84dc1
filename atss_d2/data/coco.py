"""Register any COCO-format detection dataset with detectron2, after checking its json."""

import logging
import os
from typing import Any, Dict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..utils import read_json

__all__ = ["register_coco_dataset", "validate_coco_json"]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _check_entries(json_file: str, data: Dict[str, Any], section: str) -> None:
    entries = data[section]
    if not isinstance(entries, list):
        raise ValueError(f"{json_file}: '{section}' must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{json_file}: {section}[{i}] must be an object, got {entry!r:.80}")
        missing = [k for k in _REQUIRED_KEYS[section] if k not in entry]
        if missing:
            which = f"{section}[{i}]" + (f" (id {entry['id']})" if "id" in entry else "")
            raise ValueError(f"{json_file}: {which} lacks the required key(s) {missing}")


def validate_coco_json(json_file: str) -> Dict[str, Any]:
    """
    Read a COCO instances json and check what detectron2's loader and COCO evaluation rely
    on: top-level "images", "categories" (non-empty) and "annotations" (may be absent for a
    test set without labels); the required keys of every entry; unique ids; annotations that
    name a declared category and an existing image; boxes of four numbers, width and height
    >= 0.

    Returns:
        the parsed json.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON (with line and column) or breaks a rule above
            (naming the file and the offending key, entry or id).
    """
    data = read_json(json_file, "COCO json file")
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_file}: the top level must be a JSON object, got {type(data).__name__}"
        )

    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: missing the required top-level key '{key}'")
    data.setdefault("annotations", [])
    for section in ("images", "categories", "annotations"):
        _check_entries(json_file, data, section)
    if not data["categories"]:
        raise ValueError(f"{json_file}: 'categories' is empty; declare at least one category")

    for section in ("images", "categories", "annotations"):
        seen = set()
        for entry in data[section]:
            if entry["id"] in seen:
                raise ValueError(f"{json_file}: duplicate id {entry['id']!r} in '{section}'")
            seen.add(entry["id"])

    category_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has category_id "
                f"{ann['category_id']!r}, which is not declared in 'categories' "
                f"(declared ids: {sorted(category_ids)})"
            )
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has image_id {ann['image_id']!r}, "
                "which is not in 'images'"
            )
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has bbox {bbox!r}; expected "
                "[x, y, width, height], four numbers with width, height >= 0"
            )
    return data


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """
    Check a COCO-format detection dataset (:func:`validate_coco_json`, plus the image
    directory) and register it with detectron2 as ``name`` (``register_coco_instances``), so
    that ``DATASETS.TRAIN`` / ``DATASETS.TEST`` can name it and COCO evaluation works.

    Registering the same name again with the same files does nothing; with other files it
    is an error, as is a name detectron2 already uses for another dataset.

    Image files are not opened here; missing ones are counted in a warning (training stops
    on them unless ``DATALOADER.SKIP_UNREADABLE_IMAGES``).

    The metadata gets ``thing_classes`` now (the category names ordered by id, as
    ``load_coco_json`` sets them when the dataset is loaded).

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist.
        ValueError: see :func:`validate_coco_json`; or ``name`` is taken.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"COCO image directory not found: {image_root} (for {json_file})")
    data = validate_coco_json(json_file)

    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        same = (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root)
        if same:
            return
        raise ValueError(
            f"Dataset name {name!r} is already registered (json_file="
            f"{meta.get('json_file')!r}, image_root={meta.get('image_root')!r}); choose another "
            f"name for {json_file}"
        )

    missing = [
        im["file_name"]
        for im in data["images"]
        if not os.path.isfile(os.path.join(image_root, im["file_name"]))
    ]
    if missing:
        logger.warning(
            f"{len(missing)} of the {len(data['images'])} images listed in {json_file} are not "
            f"in {image_root}, e.g. {missing[:3]}"
        )
    categories = data["categories"]
    metadata = {}
    if all(isinstance(c["id"], int) for c in categories):
        # The names in the order load_coco_json gives them (by id), known before the json is
        # loaded again: for NUM_CLASSES checks and the names of drawn boxes.
        metadata["thing_classes"] = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    register_coco_instances(name, metadata, json_file, image_root)
