"""
Datasets: the built-in synthetic "shapes" dataset and registration of COCO-format datasets.

``import atss_d2.data`` registers ``shapes_train`` and ``shapes_val`` with detectron2. They are
lazy: the images are drawn (once, then reused from disk) the first time the dataset is loaded,
under ``$ATSS_D2_DATASETS/shapes`` or, by default, ``datasets/shapes`` at the repository root.
"""

import os
from pathlib import Path
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .coco import register_coco_dataset, validate_coco_json
from .shapes import SHAPES_CLASSES, SHAPES_COLORS, SHAPES_SPLITS, ShapesSpec, generate_shapes

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_SPLITS",
    "ShapesSpec",
    "datasets_root",
    "generate_shapes",
    "load_shapes",
    "register_coco_dataset",
    "register_shapes",
    "validate_coco_json",
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


def _register_builtin() -> None:
    for split in SHAPES_SPLITS:
        register_shapes(f"shapes_{split}", split)


_register_builtin()
