"""
Register any COCO-format detection dataset with detectron2, after checking its json.

The dataset dicts are those of detectron2's ``load_coco_json`` for boxes (``file_name`` under
the image directory, ``height``, ``width``, ``image_id``; per annotation ``bbox`` in
``XYWH_ABS``, the contiguous ``category_id``, ``iscrowd``), with the annotation's ``id`` and
without ``segmentation``: a box detector trains on the box alone, where ``load_coco_json`` drops
an annotation whose polygon list is empty or too short (``[[]]``, or a box's two corners), so
that training would miss boxes the evaluation counts.
"""

import logging
import math
import os
import re
from typing import Any, Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..utils import read_json
from .image_size import (
    AMBIGUOUS_ORIENTATIONS,
    ambiguous_orientation_warning,
    size_problem,
    try_read_image_header,
    unreadable_images_message,
)
from .layout import describe_annotation_path, upload_name_candidates

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
            hint = ""
            if missing == ["bbox"] and entry.get("segmentation"):
                hint = (
                    "; it has only a 'segmentation': a box detector trains on and is evaluated "
                    "against each annotation's 'bbox' [x, y, width, height], so write one (the "
                    "extent of its polygons; pycocotools' mask.toBbox for RLE)"
                )
            raise ValueError(f"{json_file}: {which} lacks the required key(s) {missing}{hint}")


def validate_coco_json(json_file: str) -> Dict[str, Any]:
    """
    Read a COCO instances json and check what detectron2's loader and COCO evaluation rely
    on: top-level "images" and "categories" (both non-empty) and "annotations" (may be absent
    for a test set without labels); the required keys of every entry; unique ids, and unique
    names among the categories that have annotations; annotations that name a declared
    category and an existing image, without a non-zero "ignore" (which detectron2's loader
    refuses); image sizes of whole positive numbers; one entry per image file (``file_name``s
    unique); boxes of four finite numbers, width and
    height >= 0, inside their image (up to 1 px over the edge, as rounding in annotation tools
    gives; detectron2 clips such boxes).

    Returns:
        the parsed json.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder or a YOLO file was given (the message says what it holds); the
            file is not valid JSON (with line and column) or breaks a rule above
            (naming the file and the offending key, entry or id).
    """
    json_file = os.fspath(json_file)
    if os.path.isdir(json_file) or json_file.lower().endswith((".yaml", ".yml", ".txt")):
        found = describe_annotation_path(json_file)
        raise ValueError(
            f"{json_file}: expected a COCO json file (with 'images', 'annotations' and "
            f"'categories'), got a {'folder' if os.path.isdir(json_file) else 'text file'}"
            + (f"; {found}" if found else "")
        )
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
    _check_unique_file_names(json_file, data["images"])

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


def _check_unique_file_names(json_file: str, images: List[Dict[str, Any]]) -> None:
    """An image listed twice (two ids, one file) would split its boxes between two images:
    each entry trains with the other's boxes as background, and evaluation counts detections
    of one entry's objects on the other as false positives."""
    seen = {}
    for image in images:
        name = image["file_name"]
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{json_file}: image id {image['id']!r} has file_name {name!r}; expected the "
                "image's path relative to the image directory"
            )
        key = os.path.normpath(name)
        other = seen.setdefault(key, image["id"])
        if other != image["id"]:
            raise ValueError(
                f"{json_file}: images {other!r} and {image['id']!r} both have file_name "
                f"{name!r}; one image per file: merge their annotations under one image id "
                "and remove the other entry"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _base_name(file_name: str) -> str:
    """The last component of ``file_name``, whether written with "/" or "\\", without a URL's
    query ("photo.jpg?token=..."); Label Studio's local files, "/data/local-files/?d=dir/a.jpg",
    give "a.jpg"."""
    return re.split(r"[\\/]", file_name)[-1].split("?")[0]


def _is_foreign_absolute(file_name: str) -> bool:
    """Whether ``file_name`` is an absolute path (POSIX, or Windows with a drive letter or a
    share) or a URL ("s3://bucket/a.jpg", "https://..."): a path on the machine or storage of the
    annotation tool, not one under the image directory."""
    return file_name.startswith(("/", "\\")) or bool(
        re.match(r"^([A-Za-z]:[\\/]|[A-Za-z][A-Za-z0-9+.-]+://)", file_name)
    )


def _resolve_image_paths(
    json_file: str, image_root: str, images: List[Dict[str, Any]]
) -> Tuple[List[str], List[Tuple[str, str]]]:
    """
    The path of each of ``images``: ``image_root/file_name``, as detectron2's loader joins them;
    for an absolute ``file_name`` not on this machine (Label Studio writes its server's path,
    ``"/data/upload/1/3f2a9c1e-photo.jpg"``; Windows tools ``"C:\\\\photos\\\\photo.jpg"``), the
    file of that base name in ``image_root`` or, failing that, of the base name without Label
    Studio's upload prefix (8 hex digits and "-", which it adds to every uploaded file:
    ``photo.jpg``). Relative names are never rewritten: ``images/abc.jpg`` is looked up as
    ``image_root/images/abc.jpg``.

    Returns:
        the paths, and (file_name, path) for each name found by its base name.

    Raises:
        ValueError: two images of the json resolve to one file.
    """
    paths, renamed, owner = [], [], {}
    for image in images:
        name = image["file_name"]
        path = os.path.join(image_root, name)
        if _is_foreign_absolute(name) and not os.path.isfile(path):
            for candidate in upload_name_candidates(_base_name(name)):
                if candidate and os.path.isfile(os.path.join(image_root, candidate)):
                    path = os.path.join(image_root, candidate)
                    renamed.append((name, path))
                    break
        other = owner.setdefault(os.path.normpath(path), image["id"])
        if other != image["id"]:
            raise ValueError(
                f"{json_file}: images {other!r} and {image['id']!r} are both the file {path} "
                f"(file_name {name!r}, found by its base name in {image_root}); one image per "
                "file: give each image its own file"
            )
        paths.append(path)
    return paths, renamed


def _check_image_files(
    json_file: str, images: List[Dict[str, Any]], paths: List[str]
) -> Tuple[List[int], List[str], List[str]]:
    """The indices of ``images`` whose file (``paths``) is not on disk, the paths of those whose
    header cannot be read, and of those whose EXIF orientation keeps their size; raises
    ValueError for an image whose width and height do not fit the file (read from its header,
    as the data loader will see it)."""
    missing, unreadable, ambiguous = [], [], []
    for index, (image, path) in enumerate(zip(images, paths)):
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
    json_file: str,
    image_root: str,
    images: List[Dict[str, Any]],
    paths: List[str],
    missing: List[int],
) -> str:
    names = [images[i]["file_name"] for i in missing]
    message = (
        f"{len(missing)} of the {len(images)} images listed in {json_file} are not in "
        f"{image_root}, e.g. {names[:3]} (the first looked for as {paths[missing[0]]})"
    )
    first = names[0]
    # Exporters such as Label Studio write file names with the export's folder in them
    # ("images/abc.jpg"): IMAGE_DIR is then the folder above.
    parent = os.path.dirname(os.path.abspath(image_root))
    base = _base_name(first)
    if os.path.isfile(os.path.join(parent, first)):
        message += (
            f"; {os.path.join(parent, first)} exists: the file names include a folder, so "
            f"give IMAGE_DIR {parent}"
        )
    elif _is_foreign_absolute(first):
        message += (
            f"; absolute file names are looked up by their base name ({base!r}, also without "
            "Label Studio's 8-hex-digit upload prefix) in IMAGE_DIR: give IMAGE_DIR the folder "
            "of the photos"
        )
    elif _other_case(paths[missing[0]]):
        message += (
            f"; {_other_case(paths[missing[0]])} exists: the file name's case differs from the "
            "json's (file names are case-sensitive here); rename the files or the json's "
            "file_name values"
        )
    else:
        for candidate in upload_name_candidates(base):
            found = os.path.join(image_root, candidate)
            if candidate != first and os.path.isfile(found):
                prefix = (
                    f", with Label Studio's upload prefix {base[:9]!r},"
                    if candidate != base
                    else ""
                )
                message += (
                    f"; {found} exists: the json's file_name values carry folders{prefix} that "
                    "IMAGE_DIR does not have. Make file_name the path under IMAGE_DIR (e.g. "
                    f"{candidate!r} for {first!r}), or give IMAGE_DIR the folder that holds "
                    "them as named"
                )
                break
    return message


def _other_case(path: str) -> str:
    """A file in ``path``'s folder whose name differs from ``path``'s in case only, or ""."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return ""
    matches = [n for n in names if n.lower() == name.lower() and n != name]
    return os.path.join(folder, matches[0]) if matches else ""


def _warn_rotated(json_file: str, annotations: List[Dict[str, Any]]) -> None:
    """CVAT exports a rotated rectangle as its unrotated ``bbox`` with the angle in
    ``attributes.rotation`` (degrees); an axis-aligned detector takes the bbox as it is."""
    rotated = []
    for ann in annotations:
        attributes = ann.get("attributes")
        angle = attributes.get("rotation", 0) if isinstance(attributes, dict) else 0
        if _is_number(angle) and angle % 180:
            rotated.append(ann["id"])
    if rotated:
        logger.warning(
            f"{len(rotated)} box(es) of {json_file} are rotated rectangles (CVAT's "
            f"'attributes': {{'rotation': ...}}, e.g. annotation id {rotated[0]!r}): their "
            "'bbox' is the rectangle before rotation, which training and evaluation use as it "
            "is; redraw them as axis-aligned boxes (or write the bbox enclosing the rotated one)"
        )


def _load_coco_boxes(json_file: str, image_root: str, dataset_name: str) -> List[Dict]:
    """The dataset dicts of the registered json (see the module docstring)."""
    data = read_json(json_file, "COCO json file")
    meta = MetadataCatalog.get(dataset_name)
    id_map = meta.thing_dataset_id_to_contiguous_id
    paths = meta.get("image_paths") or {}
    per_image = {image["id"]: [] for image in data["images"]}
    for ann in data.get("annotations", []):
        per_image[ann["image_id"]].append(
            {
                "id": ann["id"],
                "bbox": list(ann["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": ann.get("iscrowd", 0),
            }
        )
    images = data["images"]
    try:  # as load_coco_json orders them
        images = sorted(images, key=lambda image: image["id"])
    except TypeError:  # ids of mixed types: the json's order
        pass
    dicts = [
        {
            "file_name": paths.get(image["id"]) or os.path.join(image_root, image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "annotations": per_image[image["id"]],
        }
        for image in images
    ]
    logger.info(f"Loaded {len(dicts)} images in COCO format from {json_file}")
    return dicts


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """
    Check a COCO-format detection dataset (:func:`validate_coco_json`, plus the image
    directory) and register it with detectron2 as ``name``, as ``register_coco_instances``
    does (metadata ``json_file``, ``image_root``, ``evaluator_type="coco"``), so that
    ``DATASETS.TRAIN`` / ``DATASETS.TEST`` can name it and COCO evaluation works. The dicts
    are loaded when the dataset is first used (see the module docstring).

    Registering the same name again with the same files does nothing; with other files it
    is an error, as is a name detectron2 already uses for another dataset.

    Every image's header is read: a width and height that do not fit the image as loaded
    (after its EXIF orientation; :mod:`atss_d2.data.image_size`) is an error. An absolute
    ``file_name`` (Label Studio's ``"/data/upload/1/3f2a9c1e-photo.jpg"``) is looked up by its
    base name in ``image_root`` (a warning counts them); relative ones are taken as they are.
    Missing and unreadable image files are counted in warnings, which the metadata keeps
    (``missing_images``, ``unreadable_images``), where
    :func:`atss_d2.engine.validate_config` stops a run that would need them: every evaluation,
    and training unless ``DATALOADER.SKIP_UNREADABLE_IMAGES``. A json without annotations is
    registered with a warning (COCO AP on it is undefined).

    The metadata gets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` now (as
    ``load_coco_json`` sets them: categories ordered by id, used or not).

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist.
        ValueError: see :func:`validate_coco_json`; an image's size does not fit its file; two
            images are one file; category ids that cannot be ordered (numbers and strings); or
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

    images = data["images"]
    paths, renamed = _resolve_image_paths(json_file, image_root, images)
    missing, unreadable, ambiguous = _check_image_files(json_file, images, paths)
    metadata: Dict[str, Any] = {}
    if renamed:
        logger.warning(
            f"{len(renamed)} of the {len(images)} images of {json_file} have an absolute "
            f"file_name or a URL, not on this machine, and were found by their base name in "
            f"{image_root} "
            f"(e.g. {renamed[0][0]!r} -> {renamed[0][1]})"
        )
        metadata["image_paths"] = {
            image["id"]: path
            for image, path in zip(images, paths)
            if path != os.path.join(image_root, image["file_name"])
        }
    # For validate_config: evaluation needs every image; training only with
    # DATALOADER.SKIP_UNREADABLE_IMAGES.
    if missing:
        message = _missing_images_message(json_file, image_root, images, paths, missing)
        logger.warning(message)
        metadata["missing_images"] = message
    if unreadable:
        message = unreadable_images_message(json_file, unreadable, len(images))
        logger.warning(message)
        metadata["unreadable_images"] = message
    if ambiguous:
        logger.warning(ambiguous_orientation_warning(json_file, ambiguous))
    _warn_rotated(json_file, data["annotations"])
    if not data["annotations"]:
        logger.warning(
            f"{json_file} has no annotations (a test split exported without labels?): training "
            "on it sees only background, and it has no COCO AP"
        )
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
    try:
        ordered = sorted(data["categories"], key=lambda c: c["id"])
    except TypeError:
        ids = [c["id"] for c in data["categories"]]
        raise ValueError(
            f"{json_file}: category ids {ids[:8]} mix numbers and strings; give every category "
            "an integer id"
        ) from None
    # The names and the id map as load_coco_json sets them (ids sorted), known before the json
    # is loaded: for NUM_CLASSES checks, the names of drawn boxes and the dataset's own
    # category ids in the demo's --save-json.
    metadata["thing_classes"] = [c["name"] for c in ordered]
    metadata["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(ordered)}
    DatasetCatalog.register(name, lambda: _load_coco_boxes(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
