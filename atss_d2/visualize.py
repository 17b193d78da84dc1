"""
Look at a dataset and at results, as detectron2's ``tools/visualize_data.py`` and
``tools/visualize_json_results.py`` do, for atss_d2 configs and datasets: the code of
``tools/visualize_data.py`` and ``tools/visualize_json_results.py``.

    from atss_d2.visualize import build_config, visualize_data, visualize_json_results

    cfg = build_config("configs/Shapes/atss_R_18_FPN_shapes.yaml", ["INPUT.RANDOM_FLIP", "none"])
    visualize_data(cfg, "annotation", "vis/annotation")  # DATASETS.TRAIN as loaded
    visualize_data(cfg, "dataloader", "vis/dataloader")  # after ATSSDatasetMapper
    visualize_json_results("output/inference/coco_instances_results.json", "shapes_val", "vis/res")

Boxes are drawn with detectron2's ``Visualizer``, one colour per class (the dataset's
``thing_colors`` if it has them), so that a class has the same colour in the ground truth and in
the predictions; labels are the class names of the dataset's metadata ("|crowd" marks crowd /
ignore regions). Images are written as PNG, named after the image file (``img7.jpg`` ->
``img7.png``; a name used twice gets ``_1``, ``_2``, ...).
"""

import logging
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tqdm
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .analysis import load_dataset_and_results
from .config import add_atss_config
from .data.mapper import UnreadableImageError, read_image_any_mode
from .engine.config import check_datasets_registered

__all__ = [
    "SOURCES",
    "NoDisplayError",
    "build_config",
    "class_colors",
    "draw_boxes",
    "draw_dataset_dict",
    "draw_predictions",
    "output_names",
    "visualize_data",
    "visualize_dataset_dicts",
    "visualize_json_results",
    "visualize_train_loader",
]

logger = logging.getLogger(__name__)

SOURCES = ("annotation", "dataloader")
_PALETTE = colormap(rgb=True, maximum=1)  # (74, 3) floats in [0, 1]


class NoDisplayError(RuntimeError):
    """Images were to be shown in a window, but there is no display (or no GUI in OpenCV)."""


def _check_max_images(max_images: Optional[int]) -> None:
    if max_images is not None and max_images < 1:
        raise ValueError(f"the number of images must be at least 1 (None: all), got {max_images}")


def build_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """
    A frozen config: detectron2's defaults, ``MODEL.ATSS`` (:func:`add_atss_config`), then
    ``config_file`` (a path, or the name of a shipped config such as
    ``Shapes/atss_R_18_FPN_shapes.yaml``) and the ``KEY VALUE`` overrides ``opts``.

    Raises:
        atss_d2.engine.ConfigError: naming the file and the key; or a LazyConfig (``.py``).
    """
    from .engine import ConfigError, merge_config_file, merge_config_opts
    from .train_net import resolve_config_file

    if config_file.endswith(".py"):
        raise ConfigError(
            f"{config_file} is a LazyConfig; these tools read YAML configs (each shipped "
            "LazyConfig has a YAML twin of the same name, e.g. "
            "configs/Shapes/atss_R_18_FPN_shapes.yaml)"
        )
    cfg = get_cfg()
    add_atss_config(cfg)
    merge_config_file(cfg, resolve_config_file(config_file))
    merge_config_opts(cfg, list(opts))
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def class_colors(metadata: Metadata, classes: Sequence[int]) -> List[np.ndarray]:
    """The colour (RGB in [0, 1]) of each class id: ``thing_colors`` (0-255) when the
    metadata has them, else detectron2's palette, one colour per id."""
    thing_colors = metadata.get("thing_colors")
    if thing_colors:
        return [np.asarray(thing_colors[c], dtype=np.float64) / 255.0 for c in classes]
    return [_PALETTE[c % len(_PALETTE)] for c in classes]


def _label(metadata: Metadata, c: int) -> str:
    names = metadata.get("thing_classes") or []
    return names[c] if 0 <= c < len(names) else f"class {c}"


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    metadata: Metadata,
    scores: Optional[Sequence[float]] = None,
    crowd: Optional[Sequence[bool]] = None,
) -> np.ndarray:
    """
    Draw boxes with their class names (and scores as "87%", crowd as "|crowd") on a copy of
    ``image``.

    Args:
        image: HWC uint8 RGB.
        boxes: (N, 4) XYXY pixels.
        classes: (N,) class ids (indices into ``metadata.thing_classes``).

    Returns:
        HWC uint8 RGB, the size of ``image``.
    """
    classes = [int(c) for c in classes]
    labels = [_label(metadata, c) for c in classes]
    if scores is not None:
        labels = [f"{lab} {s * 100:.0f}%" for lab, s in zip(labels, scores)]
    if crowd is not None:
        labels = [lab + ("|crowd" if k else "") for lab, k in zip(labels, crowd)]
    visualizer = Visualizer(image, metadata)
    if not classes:
        return visualizer.output.get_image()
    return visualizer.overlay_instances(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=labels,
        assigned_colors=class_colors(metadata, classes),
    ).get_image()


def draw_dataset_dict(image: np.ndarray, record: Dict, metadata: Metadata) -> np.ndarray:
    """The annotations of a detectron2 dataset dict drawn on ``image`` (HWC uint8 RGB)."""
    annotations = record.get("annotations", [])
    boxes = [
        BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations
    ]
    crowd = [bool(a.get("iscrowd", 0) or a.get("ignore", 0)) for a in annotations]
    classes = [a["category_id"] for a in annotations]
    return draw_boxes(image, np.asarray(boxes), classes, metadata, crowd=crowd)


def draw_predictions(
    image: np.ndarray, predictions: Sequence[Dict], metadata: Metadata, score_threshold: float = 0.5
) -> np.ndarray:
    """
    The detections with ``score >= score_threshold`` drawn on ``image`` (HWC uint8 RGB), with
    their scores.

    Args:
        predictions: detections in COCO results format with contiguous class ids
            (:func:`atss_d2.analysis.load_coco_results`): ``bbox`` [x, y, w, h],
            ``category_id``, ``score``.
    """
    kept = [p for p in predictions if p["score"] >= score_threshold]
    boxes = BoxMode.convert(
        np.asarray([p["bbox"] for p in kept], dtype=np.float64).reshape(-1, 4),
        BoxMode.XYWH_ABS,
        BoxMode.XYXY_ABS,
    )
    classes = [p["category_id"] for p in kept]
    return draw_boxes(image, boxes, classes, metadata, scores=[p["score"] for p in kept])


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def output_names(file_names: Sequence[str]) -> Dict[str, str]:
    """``{file_name: PNG name}``: the file's stem + ".png", made unique with "_1", "_2", ...
    (two datasets, or sub-folders, may hold files of the same name)."""
    names: Dict[str, str] = {}
    used = set()
    for file_name in file_names:
        if file_name in names:
            continue
        stem = os.path.splitext(os.path.basename(file_name))[0]
        name, k = f"{stem}.png", 0
        while name in used:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name)
        names[file_name] = name
    return names


def _open_window(name: str) -> None:
    """Open the window images are shown in, or raise :class:`NoDisplayError`."""
    import cv2

    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise NoDisplayError(
            "cannot show images: no display is available (DISPLAY is not set); write them to "
            "files with --output-dir instead"
        )
    try:
        cv2.namedWindow(name)
    except cv2.error as e:
        raise NoDisplayError(
            "cannot show images: this OpenCV has no GUI (opencv-python-headless?); write them to "
            "files with --output-dir instead"
        ) from e


class _Sink:
    """Writes each image to ``output_dir`` and/or shows it in a window (a key for the next
    image; Esc or q stops)."""

    WINDOW = "atss_d2"

    def __init__(self, output_dir: Optional[str], show: bool):
        if output_dir is None and not show:
            raise ValueError("give an output directory, or show=True")
        self.output_dir, self.show, self.written = output_dir, show, []
        if show:
            _open_window(self.WINDOW)  # before any work: no display is a one-line error
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)

    def __call__(self, image: np.ndarray, name: str) -> bool:
        """Returns whether to go on."""
        if self.output_dir is not None:
            path = os.path.join(self.output_dir, name)
            Image.fromarray(image).save(path)
            self.written.append(path)
        if self.show:
            import cv2

            try:
                cv2.imshow(self.WINDOW, image[:, :, ::-1])
                key = cv2.waitKey(0)
            except cv2.error as e:
                raise NoDisplayError(
                    f"cannot show {name}: OpenCV could not draw the window; write the images to "
                    "files with --output-dir instead"
                ) from e
            return key not in (27, ord("q"))
        return True


# ----------------------------------------------------------------------------------------------
# The dataset, as loaded and after the data loader
# ----------------------------------------------------------------------------------------------
def visualize_dataset_dicts(
    dataset_dicts: Sequence[Dict],
    metadata: Metadata,
    output_dir: Optional[str] = None,
    show: bool = False,
    max_images: Optional[int] = None,
) -> List[str]:
    """
    Draw the annotations of each dataset dict on its image, read as the data loader reads it
    (any image mode, EXIF orientation applied), at the image's size. Unreadable images are
    logged and skipped.

    Returns:
        the PNG files written (in ``output_dir``; none without it).

    Raises:
        ValueError: ``max_images`` is less than 1.
        NoDisplayError: ``show``, but there is no display.
    """
    _check_max_images(max_images)
    sink = _Sink(output_dir, show)
    records = list(dataset_dicts)[:max_images]
    names = output_names([r["file_name"] for r in records])
    for record in tqdm.tqdm(records, desc="annotation", unit="image"):
        try:
            image = read_image_any_mode(record["file_name"], "RGB")
        except UnreadableImageError as e:
            logger.warning(f"skipped: {e}")
            continue
        if not sink(draw_dataset_dict(image, record, metadata), names[record["file_name"]]):
            break
    return sink.written


def visualize_train_loader(
    cfg: CfgNode,
    output_dir: Optional[str] = None,
    show: bool = False,
    max_images: Optional[int] = None,
    build_train_loader: Optional[Callable[[CfgNode], Iterable]] = None,
) -> List[str]:
    """
    Draw the images of ``DATASETS.TRAIN`` as training sees them: the batches of the training
    loader (:meth:`atss_d2.engine.ATSSTrainer.build_train_loader`: the datasets filtered as
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says, :class:`ATSSDatasetMapper`'s reading,
    augmentation and box cleaning), the image converted from ``INPUT.FORMAT`` to RGB, at the
    mapper's size, with the ``instances`` ground-truth boxes (crowd boxes are left out by the
    mapper, as in training). Each image is drawn once, the first time the loader serves it.

    The loader is built with ``SOLVER.IMS_PER_BATCH`` 1: the batch size changes nothing in an
    image's augmentation, and with one image per batch the loader's first epoch comes out in
    the sampler's order (aspect-ratio groups smaller than a batch would otherwise wait for
    later epochs). It stops when every image was drawn, after ``max_images``, or after serving
    four times as many images as the dataset has (images it never serves: unreadable ones
    skipped with ``DATALOADER.SKIP_UNREADABLE_IMAGES``; they are counted in a warning).

    Args:
        build_train_loader: ``cfg -> loader``; default ``ATSSTrainer.build_train_loader``.

    Returns:
        the PNG files written (in ``output_dir``; none without it).

    Raises:
        ValueError: ``max_images`` is less than 1.
        NoDisplayError: ``show``, but there is no display.
    """
    _check_max_images(max_images)
    if build_train_loader is None:
        from .engine import ATSSTrainer

        build_train_loader = ATSSTrainer.build_train_loader
    check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    sink = _Sink(output_dir, show)
    # The images the loader will serve, for the names and to know when all were drawn.
    expected = [
        d["file_name"]
        for d in get_detection_dataset_dicts(
            list(cfg.DATASETS.TRAIN), filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    ]
    names = output_names(expected)
    todo = len(names) if max_images is None else min(max_images, len(names))
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.freeze()

    drawn = set()
    limit = 4 * len(names)
    if todo:
        records = (r for batch in build_train_loader(cfg) for r in batch)  # endless
        with tqdm.tqdm(total=todo, desc="dataloader", unit="image") as progress:
            for served, record in enumerate(records, start=1):
                file_name = record["file_name"]
                if file_name not in drawn:
                    drawn.add(file_name)
                    progress.update(1)
                    image = record["image"].permute(1, 2, 0).numpy()  # (H, W, C) INPUT.FORMAT
                    image = utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
                    boxes = record["instances"].gt_boxes.tensor.numpy()
                    classes = record["instances"].gt_classes.tolist()
                    image = draw_boxes(np.ascontiguousarray(image), boxes, classes, metadata)
                    if not sink(image, names[file_name]) or len(drawn) >= todo:
                        break
                if served >= limit:
                    missing = [f for f in expected if f not in drawn]
                    logger.warning(
                        f"{todo - len(drawn)} of the {todo} images were not served by the "
                        f"loader in {served} images (unreadable images skipped?), e.g. "
                        f"{missing[:3]}"
                    )
                    break
    return sink.written


def visualize_data(
    cfg: CfgNode,
    source: str,
    output_dir: Optional[str] = None,
    show: bool = False,
    max_images: Optional[int] = None,
) -> List[str]:
    """
    ``tools/visualize_data.py``: the images of ``cfg.DATASETS.TRAIN`` with their boxes,
    ``source`` "annotation" (the dataset dicts as loaded, :func:`visualize_dataset_dicts`,
    labelled with the first dataset's class names) or "dataloader" (after the training
    loader, :func:`visualize_train_loader`). ``max_images``: at most this many (at least 1;
    None: all).

    Returns:
        the PNG files written.
    """
    _check_max_images(max_images)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "dataloader":
        return visualize_train_loader(cfg, output_dir, show, max_images)
    check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    return visualize_dataset_dicts(dicts, metadata, output_dir, show, max_images)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
def visualize_json_results(
    json_file: str,
    dataset_name: str,
    output_dir: str,
    score_threshold: float = 0.5,
    max_images: Optional[int] = None,
) -> List[str]:
    """
    ``tools/visualize_json_results.py``: for each image of ``dataset_name``, its ground truth
    (left) and the detections of ``json_file`` with ``score >= score_threshold`` (right) side
    by side in one PNG (twice the image's width). The results' category ids are mapped to the
    dataset's classes as :func:`atss_d2.analysis.load_coco_results` describes. ``max_images``:
    at most this many (at least 1; None: all).

    Returns:
        the PNG files written.

    Raises:
        ValueError: results of images that are not the dataset's
            (:func:`atss_d2.analysis.load_dataset_and_results`), or ``max_images`` less than 1.
    """
    _check_max_images(max_images)
    dicts, predictions = load_dataset_and_results(json_file, dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    by_image: Dict = {}
    for p in predictions:
        by_image.setdefault(p["image_id"], []).append(p)
    sink = _Sink(output_dir, show=False)
    records = list(dicts)[:max_images]
    names = output_names([r["file_name"] for r in records])
    for record in tqdm.tqdm(records, desc="results", unit="image"):
        try:
            image = read_image_any_mode(record["file_name"], "RGB")
        except UnreadableImageError as e:
            logger.warning(f"skipped: {e}")
            continue
        gt = draw_dataset_dict(image, record, metadata)
        dets = draw_predictions(
            image, by_image.get(record["image_id"], []), metadata, score_threshold
        )
        sink(np.concatenate([gt, dets], axis=1), names[record["file_name"]])
    return sink.written
