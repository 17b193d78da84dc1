"""Register any COCO-format detection dataset with detectron2, after checking its json."""

import logging
import math
import os
from typing import Any, Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..utils import read_json
from .image_size import (
    AMBIGUOUS_ORIENTATIONS,
    ambiguous_orientation_warning,
    size_problem,
    try_read_image_header,
    unreadable_images_message,
)

__all__ = ["register_coco_dataset", "validate_coco_json"]

logger = logging.getLogger(__name__)

# How far (px) a box may reach over the image's edge before it is an error.
_TOLERANCE = 1.0

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
    on: top-level "images" and "categories" (both non-empty) and "annotations" (may be absent
    for a test set without labels); the required keys of every entry; unique ids, and unique
    names among the categories that have annotations; annotations that name a declared
    category and an existing image, without a non-zero "ignore" (which detectron2's loader
    refuses); image sizes of whole positive numbers; boxes of four finite numbers, width and
    height >= 0, inside their image (up to 1 px over the edge, as rounding in annotation tools
    gives; detectron2 clips such boxes).

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
    if not data["images"]:
        raise ValueError(f"{json_file}: 'images' is empty; the dataset has no image")

    for section in ("images", "categories", "annotations"):
        seen = set()
        for entry in data[section]:
            if entry["id"] in seen:
                raise ValueError(f"{json_file}: duplicate id {entry['id']!r} in '{section}'")
            seen.add(entry["id"])

    sizes = {}
    for image in data["images"]:
        width, height = image["width"], image["height"]
        if not all(_is_number(v) and v > 0 and v == int(v) for v in (width, height)):
            raise ValueError(
                f"{json_file}: image id {image['id']!r} ({image['file_name']!r}) has width "
                f"{width!r} and height {height!r}; expected whole numbers of pixels > 0"
            )
        sizes[image["id"]] = (width, height)

    category_ids = {c["id"] for c in data["categories"]}
    image_ids = set(sizes)
    used = {a.get("category_id") for a in data["annotations"]}
    named = {}
    # Categories with boxes only: Roboflow exports add an unused parent category named after
    # the project, which may be a class's name.
    for category in (c for c in data["categories"] if c["id"] in used):
        other = named.setdefault(category["name"], category["id"])
        if other != category["id"]:
            raise ValueError(
                f"{json_file}: categories {other!r} and {category['id']!r} are both named "
                f"{category['name']!r} and both have annotations, which would be two classes of "
                "one name; give their annotations one category id, or rename one"
            )
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
        if ann.get("ignore", 0):
            # detectron2's load_coco_json refuses the key (an assertion). COCO evaluation
            # ignores detections on crowd regions; training leaves crowd boxes out.
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has \"ignore\": "
                f"{ann['ignore']!r}, which detectron2 does not support; mark regions to ignore "
                'with "iscrowd": 1 instead'
            )
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_is_number(v) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has bbox {bbox!r}; expected "
                "[x, y, width, height], four numbers with width, height >= 0"
            )
        width, height = sizes[ann["image_id"]]
        x, y, w, h = bbox
        tol = _TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise ValueError(
                f"{json_file}: annotation id {ann['id']!r} has bbox [x, y, width, height] = "
                f"{bbox!r}, which lies outside its {width}x{height} image (image id "
                f"{ann['image_id']!r}): expected 0 <= x, x + width <= {width}, 0 <= y, "
                f"y + height <= {height}, with {tol:g} px tolerance"
            )
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_image_files(
    json_file: str, image_root: str, images: List[Dict[str, Any]]
) -> Tuple[List[int], List[str]]:
    """The indices of ``images`` not on disk, the paths of those whose header cannot be read,
    and of those whose EXIF orientation keeps their size; raises ValueError for an image whose
    width and height do not fit the file (read from its header, as the data loader will see
    it)."""
    missing, unreadable, ambiguous = [], [], []
    for index, image in enumerate(images):
        path = os.path.join(image_root, image["file_name"])
        if not os.path.isfile(path):
            missing.append(index)
            continue
        header = try_read_image_header(path)
        if header is None:  # the data loader raises, or skips it with SKIP_UNREADABLE_IMAGES
            unreadable.append(path)
            continue
        problem = size_problem(path, header, image["width"], image["height"])
        if problem:
            raise ValueError(
                f"{json_file}: image id {image['id']!r} ({image['file_name']!r}): {problem}"
            )
        if header.orientation in AMBIGUOUS_ORIENTATIONS:
            ambiguous.append(path)
    return missing, unreadable, ambiguous


def _missing_images_message(
    json_file: str, image_root: str, images: List[Dict[str, Any]], missing: List[int]
) -> str:
    names = [images[i]["file_name"] for i in missing]
    message = (
        f"{len(missing)} of the {len(images)} images listed in {json_file} are not in "
        f"{image_root}, e.g. {names[:3]}"
    )
    # Exporters such as Label Studio write file names with the export's folder in them
    # ("images/abc.jpg"): IMAGE_DIR is then the folder above.
    parent = os.path.dirname(os.path.abspath(image_root))
    if os.path.isfile(os.path.join(parent, names[0])):
        message += (
            f"; {os.path.join(parent, names[0])} exists: the file names include a folder, so "
            f"give IMAGE_DIR {parent}"
        )
    elif os.path.isfile(os.path.join(image_root, os.path.basename(names[0]))):
        message += (
            f"; {os.path.join(image_root, os.path.basename(names[0]))} exists: the json's "
            "file_name values carry folders that are not under IMAGE_DIR; make them relative "
            "to IMAGE_DIR"
        )
    return message


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """
    Check a COCO-format detection dataset (:func:`validate_coco_json`, plus the image
    directory) and register it with detectron2 as ``name`` (``register_coco_instances``), so
    that ``DATASETS.TRAIN`` / ``DATASETS.TEST`` can name it and COCO evaluation works.

    Registering the same name again with the same files does nothing; with other files it
    is an error, as is a name detectron2 already uses for another dataset.

    Every image's header is read: a width and height that do not fit the image as loaded
    (after its EXIF orientation; :mod:`atss_d2.data.image_size`) is an error. Missing and
    unreadable image files are counted in warnings, which the metadata keeps
    (``missing_images``, ``unreadable_images``), where
    :func:`atss_d2.engine.validate_config` stops a run that would need them: every evaluation,
    and training unless ``DATALOADER.SKIP_UNREADABLE_IMAGES``.

    The metadata gets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` now (as
    ``load_coco_json`` sets them when the dataset is loaded: categories ordered by id).

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist.
        ValueError: see :func:`validate_coco_json`; an image's size does not fit its file; or
            ``name`` is taken.
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

    missing, unreadable, ambiguous = _check_image_files(json_file, image_root, data["images"])
    metadata = {}
    # For validate_config: evaluation needs every image; training only with
    # DATALOADER.SKIP_UNREADABLE_IMAGES.
    if missing:
        message = _missing_images_message(json_file, image_root, data["images"], missing)
        logger.warning(message)
        metadata["missing_images"] = message
    if unreadable:
        message = unreadable_images_message(json_file, unreadable, len(data["images"]))
        logger.warning(message)
        metadata["unreadable_images"] = message
    if ambiguous:
        logger.warning(ambiguous_orientation_warning(json_file, ambiguous))
    empty = [
        a["id"]
        for a in data["annotations"]
        if (a["bbox"][2] <= 0 or a["bbox"][3] <= 0) and not a.get("iscrowd", 0)
    ]
    if empty:
        logger.warning(
            f"{len(empty)} box(es) of {json_file} have zero width or height (e.g. annotation id "
            f"{empty[0]!r}): training drops them, but COCO evaluation of this json counts each "
            "as an object to find that no detection can match (lower recall and AP); remove "
            "them from the json"
        )
    categories = data["categories"]
    if all(isinstance(c["id"], int) for c in categories):
        # The names and the id map as load_coco_json sets them (ids sorted), known before the
        # json is loaded again: for NUM_CLASSES checks, the names of drawn boxes and the
        # dataset's own category ids in the demo's --save-json.
        ordered = sorted(categories, key=lambda c: c["id"])
        metadata["thing_classes"] = [c["name"] for c in ordered]
        metadata["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(ordered)}
    register_coco_instances(name, metadata, json_file, image_root)
