"""
Datasets: the built-in synthetic "shapes" dataset, and registration of COCO-format datasets
(:func:`register_coco_dataset`) and of Pascal VOC XML folders (:func:`register_voc_dataset`),
both checked when registered, with errors that name the file.

``import atss_d2.data`` registers ``shapes_train`` and ``shapes_val`` with detectron2. They are
lazy: the images are drawn (once, then reused from disk) the first time the dataset is loaded,
under ``$ATSS_D2_DATASETS/shapes`` or, by default, ``datasets/shapes`` at the repository root.

Scripts register the datasets of their command line (``--coco-dataset NAME JSON IMAGE_DIR``,
``--voc-dataset NAME ANNOTATIONS_DIR IMAGES_DIR``, ``--classes a,b,c``; added to a parser by
:func:`add_dataset_arguments`) with :func:`register_datasets_from_args`.
"""

import argparse
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .build import build_atss_train_loader
from .coco import register_coco_dataset, validate_coco_json
from .shapes import SHAPES_CLASSES, SHAPES_COLORS, SHAPES_SPLITS, ShapesSpec, generate_shapes
from .voc import VOCAnnotationError, load_voc_folder, register_voc_dataset, voc_class_names

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_SPLITS",
    "ShapesSpec",
    "VOCAnnotationError",
    "add_dataset_arguments",
    "build_atss_train_loader",
    "datasets_root",
    "generate_shapes",
    "load_shapes",
    "load_voc_folder",
    "parse_class_names",
    "register_coco_dataset",
    "register_datasets_from_args",
    "register_shapes",
    "register_voc_dataset",
    "validate_coco_json",
    "voc_class_names",
]


def datasets_root(root: Optional[os.PathLike] = None) -> Path:
    """
    Where datasets live: ``root`` if given, else ``$ATSS_D2_DATASETS``, else ``datasets/`` at
    the repository root (for an editable install; ``./datasets`` otherwise).
    """
    if root is not None:
        return Path(root)
    env = os.environ.get("ATSS_D2_DATASETS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.py").is_file():
        return repo / "datasets"
    return Path("datasets")


def load_shapes(
    split: str,
    root: Optional[os.PathLike] = None,
    spec: Optional[ShapesSpec] = None,
    dataset_name: Optional[str] = None,
) -> List[Dict]:
    """
    Draw the split if it is not on disk yet, then load it as detectron2 dataset dicts.

    Args:
        split: "train", "val", or any name when ``spec`` is given.
        root: directory of all datasets (see :func:`datasets_root`); the split is written to
            ``root/shapes/split``.
        spec: how to draw the split; defaults to ``SHAPES_SPLITS[split]``.
        dataset_name: the registered name, whose metadata gets ``json_file`` and
            ``image_root`` (COCO evaluation then reads the json directly).
    """
    split_dir = generate_shapes(datasets_root(root) / "shapes", split, spec)
    json_file, image_root = str(split_dir / "annotations.json"), str(split_dir / "images")
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(json_file=json_file, image_root=image_root)
    return load_coco_json(json_file, image_root, dataset_name)


def register_shapes(
    name: str,
    split: str,
    root: Optional[os.PathLike] = None,
    spec: Optional[ShapesSpec] = None,
) -> None:
    """
    Register a split of the shapes dataset as ``name`` (lazily: nothing is drawn until the
    dataset is loaded), with the metadata the evaluator and the Visualizer use.
    """
    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(name, lambda: load_shapes(split, root, spec, dataset_name=name))
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        thing_colors=[list(c) for c in SHAPES_COLORS],
        evaluator_type="coco",
    )


def parse_class_names(text: str) -> List[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (a ``--classes`` value); an empty name is an error."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ValueError(f"--classes {text!r}: expected comma-separated names, e.g. 'cat,dog'")
    return names


def add_dataset_arguments(
    parser: argparse.ArgumentParser, classes_help: Optional[str] = None
) -> argparse.ArgumentParser:
    """Add ``--coco-dataset``, ``--voc-dataset`` and ``--classes`` to ``parser``, as
    ``train_net.py`` has them; pass the parsed values to :func:`register_datasets_from_args`."""
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset under NAME (repeatable)",
    )
    parser.add_argument(
        "--voc-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "ANNOTATIONS_DIR", "IMAGES_DIR"),
        help="register a folder of Pascal VOC XML files under NAME (repeatable)",
    )
    parser.add_argument(
        "--classes",
        metavar="A,B,C",
        help=classes_help
        or "class names (and their order) of the --voc-dataset folders; default: the sorted "
        "union of the names in their XML files",
    )
    return parser


def register_datasets_from_args(
    coco: Optional[Iterable[Sequence[str]]] = None,
    voc: Optional[Iterable[Sequence[str]]] = None,
    classes: Union[None, str, Sequence[str]] = None,
) -> List[str]:
    """
    Register the datasets named on a command line, for ``train_net.py``, ``demo/demo.py`` and
    ``tools/compare_detectors.py``.

    Args:
        coco: (NAME, JSON, IMAGE_DIR) triples, as argparse gives ``--coco-dataset`` with
            ``nargs=3, action="append"`` (None when the flag is absent); see
            :func:`register_coco_dataset`.
        voc: (NAME, ANNOTATIONS_DIR, IMAGES_DIR) triples of ``--voc-dataset``; see
            :func:`register_voc_dataset` (difficult objects: "ignore").
        classes: the class names of the VOC folders (``--classes``: a comma-separated string,
            or a list); None: the sorted union over all the folders given
            (:func:`voc_class_names`), so that a train and a val folder share the class ids
            even when one lacks a class. COCO jsons declare their own.

    Returns:
        the registered names, COCO datasets first, each in the order given.
    """
    if isinstance(classes, str):
        classes = parse_class_names(classes)
    voc = list(voc or [])
    if classes is not None and coco and not voc:
        raise ValueError(
            "--classes names the classes of --voc-dataset folders; a COCO json's classes are "
            "its 'categories' (drop --classes, or edit the json)"
        )
    if classes is None and len(voc) > 1:
        classes = voc_class_names([annotations_dir for _, annotations_dir, _ in voc])
    names = []
    for name, json_file, image_root in coco or []:
        register_coco_dataset(name, json_file, image_root)
        names.append(name)
    for name, annotations_dir, images_dir in voc:
        register_voc_dataset(name, annotations_dir, images_dir, classes=classes)
        names.append(name)
    return names


def _register_builtin() -> None:
    for split in SHAPES_SPLITS:
        register_shapes(f"shapes_{split}", split)


_register_builtin()
