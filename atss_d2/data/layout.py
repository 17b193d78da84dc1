"""
What an annotation path given for one format holds instead, for the errors of
``--coco-dataset`` / ``--voc-dataset``: a YOLO folder (``images/`` + ``labels/*.txt``, one
``class x_center y_center width height`` line per box, Ultralytics' layout), a folder with COCO
jsons in it, or one with a Pascal VOC ``Annotations/`` folder.
"""

import os
import re
from typing import List, Optional

__all__ = ["describe_annotation_path", "upload_name_candidates"]

# Label Studio stores an upload as "<the first 8 hex digits of a uuid4>-<original name>".
_LABEL_STUDIO_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def upload_name_candidates(base: str) -> List[str]:
    """``[base]``, then ``base`` without Label Studio's upload prefix when it has one
    ("3f2a9c1e-photo.jpg" -> "photo.jpg"): the names an exported image may have on disk."""
    match = _LABEL_STUDIO_PREFIX.match(base)
    return [base] + ([match.group(1)] if match else [])


# How many files of a folder are looked at (a folder of a million images is not listed).
_MAX_FILES = 2000


def _files(folder: str) -> List[str]:
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                names.append(entry.name)
                if len(names) >= _MAX_FILES:
                    break
    return sorted(names)


def _is_yolo_label(path: str) -> bool:
    """Whether the first non-empty line of the text file ``path`` is a YOLO box: an integer
    class and four numbers in [0, 1] (normalised centre and size)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 5 or not fields[0].isdigit():
                    return False
                values = [float(v) for v in fields[1:5]]
                return all(0.0 <= v <= 1.0 for v in values)
    except (OSError, ValueError):
        return False
    return False


def _yolo_labels(folder: str) -> Optional[str]:
    """A YOLO label file in ``folder`` or its ``labels/`` subfolder, if there is one."""
    for where in (folder, os.path.join(folder, "labels")):
        if not os.path.isdir(where):
            continue
        texts = [n for n in _files(where) if n.lower().endswith(".txt") and n != "classes.txt"]
        for name in texts[:5]:
            if _is_yolo_label(os.path.join(where, name)):
                return os.path.join(where, name)
    return None


def describe_annotation_path(path: str) -> str:
    """
    A sentence on the annotation format found at ``path`` (a folder, or a file that is not
    what was expected), naming a file of it, or "" when none of the known layouts is there (or
    the folder cannot be listed).
    """
    try:
        return _describe(os.fspath(path))
    except OSError:  # e.g. no permission: the caller's own message stands alone
        return ""


def _describe(path: str) -> str:
    if os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        if path.lower().endswith((".yaml", ".yml")) or _is_yolo_label(path):
            label = _yolo_labels(folder) or _yolo_labels(os.path.dirname(folder) or ".")
            return (
                f"{path} is a YOLO file (a dataset .yaml or a label .txt)"
                + (f"; labels such as {label} are in YOLO's format" if label else "")
                + ". Convert the YOLO labels to COCO json or Pascal VOC XML first"
            )
        return ""
    if not os.path.isdir(path):
        return ""
    label = _yolo_labels(path)
    if label:
        return (
            f"{path} holds YOLO labels (one 'class x_center y_center width height' line per box, "
            f"e.g. {label}), not this format. Convert them to COCO json or Pascal VOC XML first"
        )
    names = _files(path)
    jsons = [n for n in names if n.lower().endswith(".json")]
    if jsons:
        return (
            f"{path} holds the json file(s) {jsons[:3]}: give a COCO json itself with "
            f"--coco-dataset NAME {os.path.join(path, jsons[0])} IMAGE_DIR"
        )
    xmls = [n for n in names if n.lower().endswith(".xml")]
    if xmls:
        return (
            f"{path} holds XML files ({xmls[0]}, ...): for Pascal VOC XML use --voc-dataset NAME "
            f"{path} IMAGES_DIR"
        )
    xml_dir = os.path.join(path, "Annotations")
    if os.path.isdir(xml_dir):
        return f"{path} has an Annotations/ folder: give that folder ({xml_dir}) for VOC XML files"
    found = sorted({os.path.splitext(n)[1].lower() or n for n in names})
    if found:
        return f"{path} holds files of the kinds {found[:8]}"
    return f"{path} is empty"
