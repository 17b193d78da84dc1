"""
Register a folder of Pascal VOC XML annotations (as labelImg, CVAT or Label Studio export them)
as a detectron2 detection dataset, after checking every file.

One XML file per image, every ``*.xml`` of the folder and its subfolders (CVAT keeps the folders
of the images' names), read from ``<annotation>``:

- ``<filename>``: the image, looked up in the images directory. When it has no image extension
  or is not there, the XML file's stem (its path under the annotations folder, then its base
  name) with a common image extension is tried (exporters often write the name of the uploaded
  file or drop the extension), then the file name without Label Studio's upload prefix
  ("3f2a9c1e-photo.jpg" -> "photo.jpg").
- ``<size><width><height>``: the image size. Some tools leave it out or write 0; the size is then
  read from the image file's header (no decoding), after its EXIF orientation, as the data
  loader will see the image. A size that is given must be that of the image as loaded: one that
  matches the pixels as stored but not the EXIF-turned image (labelImg ignores the tag) or
  another size altogether is an error (:mod:`atss_d2.data.image_size`); images mirrored or
  turned 180 degrees by their tag, whose size cannot tell, are counted in a warning.
- ``<object>``: ``<name>``, ``<difficult>`` (optional, 0 or 1) and
  ``<bndbox><xmin><ymin><xmax><ymax>``, numbers, possibly fractional (CVAT writes "12.5").

Coordinates: VOC's are 1-based, pixel-inclusive: (xmin=1, xmax=W) covers a whole row of a W px
wide image. As detectron2's own VOC loader (``detectron2/data/datasets/pascal_voc.py``,
``load_voc_instances``, "Make pixel indexes 0-based") does, 1 is subtracted from xmin and ymin
only, and the box is ``BoxMode.XYXY_ABS``: (xmin - 1, ymin - 1, xmax, ymax). A box that follows
VOC's rule (1 <= xmin < xmax <= W, the same for y) thus lies in [0, W] x [0, H], and COCO AP on
these dicts scores the same boxes as detectron2's VOC tooling. Boxes may exceed that rule by up to
1 px (exporters that write 0-based coordinates produce xmin = 0); they are clipped to the image.

``difficult`` objects, as VOC's own evaluation treats them as neither to be found nor wrong:

- ``"ignore"`` (default): kept with ``iscrowd=1``. COCO evaluation then treats them as ignore
  regions (a detection on one is neither a true nor a false positive), and training leaves them
  out (atss_d2's mapper drops crowd annotations).
- ``"drop"``: removed (a detection on one counts as a false positive).
- ``"keep"``: ordinary objects, trained on and to be detected.

Class ids are the same in the three modes: without ``classes``, they index the sorted union of
every ``<name>`` of the folder, difficult objects included. Without ``classes``, names that
differ only in case or spaces ("Cat", "cat") are an error: they would be two classes.

An ``<annotation>`` in an XML namespace (``<annotation xmlns="...">``) is read as plain VOC.
"""

import copy
import difflib
import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple
from xml.parsers import expat

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .image_size import (
    AMBIGUOUS_ORIENTATIONS,
    ImageHeader,
    ambiguous_orientation_warning,
    size_problem,
    try_read_image_header,
    unreadable_images_message,
)
from .layout import describe_annotation_path, upload_name_candidates

__all__ = [
    "DIFFICULT_MODES",
    "VOCAnnotationError",
    "load_voc_folder",
    "register_voc_dataset",
    "voc_class_names",
]

logger = logging.getLogger(__name__)

DIFFICULT_MODES = ("ignore", "drop", "keep")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_COORDINATES = ("xmin", "ymin", "xmax", "ymax")
# How far (px) a box may exceed VOC's 1 <= xmin < xmax <= width rule before it is an error.
_TOLERANCE = 1.0

# name -> (annotations_dir, images_dir, classes, difficult) as requested, absolute paths; for
# telling a repeated registration (a no-op) from a clash.
_registered: Dict[str, Tuple[str, str, Optional[Tuple[str, ...]], str]] = {}


class VOCAnnotationError(ValueError):
    """A VOC annotation folder that cannot be used; the message names the XML file (or the
    folder) and the problem."""


class _Object:
    """One ``<object>`` as written: its class name, VOC box (xmin, ymin, xmax, ymax) and flag."""

    __slots__ = ("name", "box", "difficult")

    def __init__(self, name: str, box: Tuple[float, float, float, float], difficult: bool):
        self.name, self.box, self.difficult = name, box, difficult


def _text(element: Optional[ET.Element], tag: str) -> Optional[str]:
    """The stripped text of ``element``'s child ``tag``; None if there is no such child or no
    text in it."""
    if element is None:
        return None
    text = element.findtext(tag)
    text = text.strip() if text is not None else None
    return text or None


def _parse_xml(xml_file: str) -> ET.Element:
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        line, column = e.position
        raise VOCAnnotationError(
            f"{xml_file}: malformed XML at line {line}, column {column + 1}: "
            f"{expat.ErrorString(e.code)}"
        ) from e
    if root.tag.startswith("{"):
        # <annotation xmlns="...">: the tags are VOC's, each qualified by the namespace.
        for element in root.iter():
            if isinstance(element.tag, str):
                element.tag = element.tag.rsplit("}", 1)[-1]
    if root.tag != "annotation":
        hint = ""
        if root.tag == "annotations":  # CVAT's own format: all images in one file
            hint = (
                ": this is CVAT's 'CVAT for images' export; export the task as 'PASCAL VOC 1.1' "
                "(one XML per image) or 'COCO 1.0'"
            )
        raise VOCAnnotationError(
            f"{xml_file}: the root element is <{root.tag}>, expected <annotation> (Pascal VOC)"
            + hint
        )
    return root


def _find_image(xml_file: str, filename: str, images_dir: str, stem: str) -> str:
    """The path of the image of ``xml_file``: ``images_dir/filename``, else (see the module
    docstring) the filename or the XML's ``stem`` (its path under the annotations folder,
    without ``.xml``), or the stem's base name, with an image extension; else the filename
    without Label Studio's upload prefix."""
    extensions = _IMAGE_EXTENSIONS + tuple(e.upper() for e in _IMAGE_EXTENSIONS)
    candidates = [filename]
    if os.path.splitext(filename)[1].lower() not in _IMAGE_EXTENSIONS:
        candidates += [filename + e for e in extensions]
    for name in (stem, os.path.basename(stem)):
        candidates += [name + e for e in extensions]
    for name in upload_name_candidates(os.path.basename(filename))[1:]:
        candidates.append(os.path.join(os.path.dirname(filename), name))
    for candidate in dict.fromkeys(candidates):  # unique, in order
        path = os.path.join(images_dir, candidate)
        if os.path.isfile(path):
            return path
    raise VOCAnnotationError(
        f"{xml_file}: image not found: {os.path.join(images_dir, filename)} (<filename> is "
        f"{filename!r}; also tried {stem}.jpg, .png and the other common image extensions in "
        f"{images_dir})"
    )


def _size_from_xml(xml_file: str, root: ET.Element) -> Tuple[int, int]:
    """(width, height) of ``<size>``; 0 for a value that is absent or 0."""
    size = root.find("size")
    values = []
    for tag in ("width", "height"):
        text = _text(size, tag)
        if text is None:
            values.append(0)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0 and value == int(value)):
            raise VOCAnnotationError(
                f"{xml_file}: <size><{tag}> is {text!r}; expected a whole number of pixels"
            )
        values.append(int(value))
    return values[0], values[1]


def _parse_object(xml_file: str, index: int, obj: ET.Element, width: int, height: int) -> _Object:
    """Check one ``<object>`` (``index``: its position in the file, from 1) against the image's
    ``width`` x ``height``."""
    name = _text(obj, "name")
    if name is None:
        raise VOCAnnotationError(f"{xml_file}: object #{index} lacks <name>")
    where = f"{xml_file}: object #{index} ({name!r})"

    flag = _text(obj, "difficult") or "0"
    if flag.lower() not in ("0", "1", "false", "true"):
        raise VOCAnnotationError(f"{where}: <difficult> is {flag!r}; expected 0 or 1")

    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise VOCAnnotationError(f"{where} lacks <bndbox>")
    box = []
    for tag in _COORDINATES:
        text = _text(bndbox, tag)
        if text is None:
            raise VOCAnnotationError(f"{where} lacks <bndbox><{tag}>")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise VOCAnnotationError(f"{where}: <{tag}> is {text!r}, not a number")
        box.append(value)
    xmin, ymin, xmax, ymax = box

    shown = f"(xmin, ymin, xmax, ymax) = ({', '.join(f'{v:g}' for v in box)})"
    # Inclusive 1-based pixels: xmin == xmax is a box one pixel wide (width xmax - xmin + 1).
    if xmax - xmin + 1 <= 0 or ymax - ymin + 1 <= 0:
        raise VOCAnnotationError(
            f"{where}: empty box {shown}; expected xmin <= xmax, ymin <= ymax (VOC's pixels are "
            "inclusive: xmin == xmax is one pixel wide)"
        )
    lowest = 1 - _TOLERANCE
    if xmin < lowest or ymin < lowest or xmax > width + _TOLERANCE or ymax > height + _TOLERANCE:
        raise VOCAnnotationError(
            f"{where}: box {shown} lies outside the {width}x{height} image (VOC coordinates are "
            f"1-based: 1 <= xmin < xmax <= {width}, 1 <= ymin < ymax <= {height}, with "
            f"{_TOLERANCE:g} px tolerance)"
        )
    return _Object(name, (xmin, ymin, xmax, ymax), flag.lower() in ("1", "true"))


def _read_xml(
    xml_file: str, images_dir: str, stem: str
) -> Tuple[Dict, List[_Object], Optional[ImageHeader]]:
    """The image record (file_name, height, width), the objects and the image's header (None
    when unreadable) of one XML file (``stem``: its path under the annotations folder, without
    ``.xml``); ``<size>`` is checked against the header."""
    root = _parse_xml(xml_file)
    filename = _text(root, "filename")
    if filename is None:
        raise VOCAnnotationError(f"{xml_file} lacks <filename> (the image's file name)")
    image_file = _find_image(xml_file, filename, images_dir, stem)
    width, height = _size_from_xml(xml_file, root)
    header = try_read_image_header(image_file)
    if width == 0 or height == 0:
        if header is None:
            raise VOCAnnotationError(
                f"{xml_file}: <size> is missing or 0 and the size of {image_file} cannot be read"
            )
        width, height = header.size
    elif header is not None:
        problem = size_problem(image_file, header, width, height)
        if problem:
            raise VOCAnnotationError(f"{xml_file}: <size> does not fit the image: {problem}")
    objects = [
        _parse_object(xml_file, i, obj, width, height)
        for i, obj in enumerate(root.findall("object"), start=1)
    ]
    return {"file_name": image_file, "height": height, "width": width}, objects, header


def _xml_files(annotations_dir: str) -> List[str]:
    """The ``.xml`` files of ``annotations_dir`` and its subfolders (CVAT keeps the folders of
    the images' names: ``Annotations/set1/img.xml``), sorted by their path in it."""
    if os.path.isfile(annotations_dir):
        hint = ""
        if annotations_dir.lower().endswith(".json"):
            hint = "; a COCO json goes to --coco-dataset NAME JSON IMAGE_DIR"
        raise VOCAnnotationError(
            f"{annotations_dir} is a file; expected the folder of the Pascal VOC XML files (one "
            f"per image){hint}"
        )
    if not os.path.isdir(annotations_dir):
        raise FileNotFoundError(f"VOC annotations directory not found: {annotations_dir}")
    names = []
    for folder, subfolders, files in os.walk(annotations_dir):
        subfolders.sort()
        relative = os.path.relpath(folder, annotations_dir)
        names += [
            os.path.normpath(os.path.join(relative, n)) for n in files if n.lower().endswith(".xml")
        ]
    if not names:
        found = describe_annotation_path(annotations_dir)
        raise VOCAnnotationError(
            f"{annotations_dir}: no .xml annotation files in this directory; expected one "
            "Pascal VOC XML file per image" + (f". {found}" if found else "")
        )
    return [os.path.join(annotations_dir, n) for n in sorted(names)]


def _images_without_xml(images_dir: str, used: Sequence[str]) -> List[str]:
    """The image files under ``images_dir`` that no XML names (in path order)."""
    used = {os.path.normpath(p) for p in used}
    unused = []
    for folder, subfolders, files in os.walk(images_dir):
        subfolders.sort()
        for name in sorted(files):
            path = os.path.normpath(os.path.join(folder, name))
            if name.lower().endswith(_IMAGE_EXTENSIONS) and path not in used:
                unused.append(path)
    return unused


def voc_class_names(annotations_dirs: Sequence[str]) -> List[str]:
    """The sorted union of the ``<object><name>`` values of every XML file in
    ``annotations_dirs``: one class list (one set of ids) for a train and a val folder, even
    when a class is missing from one of them."""
    names = {}  # name -> the first XML file using it
    for annotations_dir in annotations_dirs:
        for xml_file in _xml_files(annotations_dir):
            for obj in _parse_xml(xml_file).findall("object"):
                name = _text(obj, "name")
                if name:
                    names.setdefault(name, xml_file)
    _check_spellings(names)
    return sorted(names)


def _check_spellings(first_use: Dict[str, str]) -> None:
    """Raise if two class names (``first_use``: name -> an XML file using it) differ only in
    case or spaces ("Cat" and "cat"): taken as given they would be two classes, each with part
    of the objects of one. ``classes`` naming both keeps them apart."""
    spellings: Dict[str, List[str]] = {}
    for name in sorted(first_use):
        spellings.setdefault(" ".join(name.split()).casefold(), []).append(name)
    for names in spellings.values():
        if len(names) > 1:
            shown = ", ".join(f"{n!r} (e.g. {first_use[n]})" for n in names)
            raise VOCAnnotationError(
                f"class names {shown} differ only in case or spaces, which would make them "
                "separate classes; write one spelling in the XML files, or give the class list "
                "(--classes / classes=[...]) with both names to keep them apart"
            )


def _check_classes(classes: Sequence[str]) -> List[str]:
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of names, got the string {classes!r}")
    classes = list(classes)
    if not classes or not all(isinstance(c, str) and c.strip() == c and c for c in classes):
        raise ValueError(
            f"classes must be a non-empty list of class names without surrounding spaces, "
            f"got {classes!r}"
        )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"classes repeats {duplicates}: {classes}")
    return classes


def _to_xyxy_abs(box: Tuple[float, float, float, float], width: int, height: int) -> List[float]:
    """VOC (xmin, ymin, xmax, ymax), 1-based inclusive -> XYXY_ABS, inside the image."""
    xmin, ymin, xmax, ymax = box
    return [
        max(xmin - 1, 0.0),
        max(ymin - 1, 0.0),
        min(xmax, float(width)),
        min(ymax, float(height)),
    ]


def _load(
    annotations_dir: str, images_dir: str, classes: Optional[Sequence[str]], difficult: str
) -> Tuple[List[Dict], List[str]]:
    """:func:`load_voc_folder`'s dataset dicts, the class names, and the images whose header
    cannot be read (left to the data loader, which raises or skips them)."""
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult must be one of {DIFFICULT_MODES}, got {difficult!r}")
    if classes is not None:
        classes = _check_classes(classes)
    xml_files = _xml_files(annotations_dir)
    nested = sorted(
        {os.path.dirname(os.path.relpath(x, annotations_dir)) for x in xml_files} - {""}
    )
    if nested:
        logger.info(
            f"{annotations_dir}: the XML files of its subfolders are part of the dataset too "
            f"({', '.join(n + '/' for n in nested[:5])}{', ...' if len(nested) > 5 else ''})"
        )
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(
            f"VOC image directory not found: {images_dir} (for {annotations_dir})"
        )
    parsed = []
    ambiguous, unreadable = [], []
    for xml_file in xml_files:
        stem = os.path.splitext(os.path.relpath(xml_file, annotations_dir))[0]
        record, objects, header = _read_xml(xml_file, images_dir, stem)
        parsed.append((xml_file, record, objects))
        if header is None:
            unreadable.append(record["file_name"])
        elif header.orientation in AMBIGUOUS_ORIENTATIONS:
            ambiguous.append(record["file_name"])
    if ambiguous:
        logger.warning(ambiguous_orientation_warning(annotations_dir, ambiguous))
    xml_of = {}
    for xml_file, record, _ in parsed:
        other = xml_of.setdefault(record["file_name"], xml_file)
        if other != xml_file:
            raise VOCAnnotationError(
                f"{other} and {xml_file} both annotate {record['file_name']} (their <filename>): "
                "one XML per image; a copied XML whose <filename> still names the original?"
            )

    if classes is None:
        first_use = {}
        for xml_file, _, objects in parsed:
            for obj in objects:
                first_use.setdefault(obj.name, xml_file)
        _check_spellings(first_use)
        classes = sorted(first_use)
        if not classes:
            raise VOCAnnotationError(
                f"{annotations_dir}: none of the {len(xml_files)} XML files has an <object>, so "
                "there are no class names; pass classes=[...]"
            )
    class_ids = {name: i for i, name in enumerate(classes)}

    dicts = []
    for image_id, (xml_file, record, objects) in enumerate(parsed):
        annotations = []
        for index, obj in enumerate(objects, start=1):
            if obj.name not in class_ids:
                close = difflib.get_close_matches(obj.name, classes, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise VOCAnnotationError(
                    f"{xml_file}: object #{index} has class {obj.name!r}, which is not one of "
                    f"the given classes {classes}{hint}"
                )
            if obj.difficult and difficult == "drop":
                continue
            annotations.append(
                {
                    "bbox": _to_xyxy_abs(obj.box, record["width"], record["height"]),
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": class_ids[obj.name],
                    "iscrowd": int(obj.difficult and difficult == "ignore"),
                }
            )
        dicts.append({**record, "image_id": image_id, "annotations": annotations})
    return dicts, classes, unreadable


def load_voc_folder(
    annotations_dir: str,
    images_dir: str,
    classes: Optional[Sequence[str]] = None,
    difficult: str = "ignore",
    dataset_name: Optional[str] = None,
) -> List[Dict]:
    """
    Read and check every ``*.xml`` file of ``annotations_dir`` and its subfolders (sorted by
    path), as described in the module docstring.

    Args:
        annotations_dir: the folder of the XML files.
        images_dir: the folder of the images named by their ``<filename>``.
        classes: the class names; ``classes[i]`` gets category id ``i``. None: the sorted union
            of the ``<name>`` of every object of the folder.
        difficult: "ignore", "drop" or "keep" (see the module docstring).
        dataset_name: if given, its metadata gets ``thing_classes`` (as detectron2's
            ``load_coco_json`` does).

    Returns:
        detectron2 dataset dicts, one per XML file, in file-name order: ``file_name`` (str),
        ``image_id`` (int, the position), ``height``, ``width`` (int), ``annotations``: a list
        of ``{"bbox": [x0, y0, x1, y1] (floats), "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": int, "iscrowd": 0 or 1}``.

    Raises:
        FileNotFoundError: ``annotations_dir`` or ``images_dir`` does not exist.
        VOCAnnotationError: naming the XML file (or the folder): no XML file; malformed XML
            (with line and column); a missing ``<filename>``, ``<bndbox>`` or coordinate; a
            coordinate that is not a number; an empty box (xmax < xmin or ymax < ymin); a
            box outside the image by more than 1 px (with the image size); a missing or
            unreadable image; with ``classes``, an object of another class; without, a folder
            without any object, or class names that differ only in case or spaces.
        ValueError: ``difficult`` is not a mode, or ``classes`` is empty or repeats a name.
    """
    dicts, classes, _ = _load(os.fspath(annotations_dir), os.fspath(images_dir), classes, difficult)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).thing_classes = classes
    return dicts


def register_voc_dataset(
    name: str,
    annotations_dir: str,
    images_dir: str,
    classes: Optional[Sequence[str]] = None,
    difficult: str = "ignore",
) -> None:
    """
    Check a VOC annotation folder (:func:`load_voc_folder`: every XML file is parsed now, so
    that errors appear before training starts) and register it with detectron2 as ``name``,
    serving the parsed dicts (a copy on each ``DatasetCatalog.get``). A warning counts the
    images of ``images_dir`` that no XML names (they are not part of the dataset).

    Metadata: ``thing_classes``; ``evaluator_type="coco"``: COCO AP, computed by atss_d2's
    ``ATSSCOCOEvaluator``, which converts the dataset dicts to a COCO json,
    ``<output_dir>/<name>_coco_format_<digest>.json``, the digest taken from the dicts (so an
    evaluation after editing the XML files uses the edited boxes; detectron2's own
    ``COCOEvaluator`` caches ``<name>_coco_format.json`` and keeps using it).
    ``annotations_dir``, ``images_dir``; ``dirname``
    (the folder holding ``annotations_dir``, the dataset root of detectron2's VOC metadata) and
    ``difficult``.

    Registering the same name again with the same arguments does nothing; with others it is an
    error, as is a name detectron2 already uses for another dataset (e.g. detectron2's
    built-in ``voc_2007_train``).

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        annotations_dir, images_dir, classes, difficult: see :func:`load_voc_folder`.

    Raises:
        FileNotFoundError, VOCAnnotationError, ValueError: see :func:`load_voc_folder`; or
            (ValueError) ``name`` is taken.
    """
    annotations_dir, images_dir = os.fspath(annotations_dir), os.fspath(images_dir)
    request = (
        os.path.abspath(annotations_dir),
        os.path.abspath(images_dir),
        None if classes is None else tuple(classes),
        difficult,
    )
    if name in DatasetCatalog.list():
        previous = _registered.get(name)
        if previous == request:
            return
        if previous is None:
            what = "for another dataset"
        else:
            what = (
                f"for the VOC folder annotations_dir={previous[0]!r}, images_dir={previous[1]!r}, "
                f"classes={previous[2]!r}, difficult={previous[3]!r}"
            )
        raise ValueError(
            f"Dataset name {name!r} is already registered {what}; choose another name for "
            f"{annotations_dir}"
        )

    dicts, classes, unreadable = _load(annotations_dir, images_dir, classes, difficult)
    extra = {}
    if unreadable:
        # For validate_config: evaluation needs every image; training only with
        # DATALOADER.SKIP_UNREADABLE_IMAGES.
        extra["unreadable_images"] = unreadable_images_message(
            annotations_dir, unreadable, len(dicts)
        )
        logger.warning(extra["unreadable_images"])
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(
        thing_classes=list(classes),
        evaluator_type="coco",
        dirname=os.path.dirname(os.path.abspath(annotations_dir)),
        annotations_dir=annotations_dir,
        images_dir=images_dir,
        difficult=difficult,
        **extra,
    )
    _registered[name] = request
    unused = _images_without_xml(images_dir, [d["file_name"] for d in dicts])
    if unused:
        # labelImg writes no XML for an image left without boxes: such negatives are not part
        # of the dataset unless an (empty) annotation is saved for them.
        logger.warning(
            f"{len(unused)} image(s) in {images_dir} have no XML file in {annotations_dir} and "
            f"are not part of dataset {name!r} (e.g. {unused[0]}). To train on an image without "
            "objects, save an annotation without <object> for it (labelImg: Save on the empty "
            "image); images of another split in a shared folder need nothing"
        )
    num_boxes = sum(len(d["annotations"]) for d in dicts)
    logger.info(
        f"Registered VOC dataset {name!r}: {len(dicts)} images, {num_boxes} boxes, "
        f"{len(classes)} classes, difficult objects: {difficult}"
    )
