"""
A synthetic detection dataset, "shapes": solid ellipses, rectangles and triangles on a plain
background, written once as COCO json + PNG files.

Everything is a deterministic function of the seed and the :class:`ShapesSpec`: the same
arguments give the same json and the same pixels. Objects vary in size (some under 16 px),
aspect ratio (about 1:2.5 to 2.5:1), colour and position, may overlap (bounded, so that every
object stays mostly visible), and some images hold no object at all. Boxes are the tight boxes
of each object's own pixels (amodal: an occluded object keeps its full box), so they are exact.
"""

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = ["SHAPES_CLASSES", "SHAPES_COLORS", "ShapesSpec", "SHAPES_SPLITS", "generate_shapes"]

logger = logging.getLogger(__name__)

# Bump when the drawing changes, so that datasets written by an older version are rewritten.
GENERATOR_VERSION = 1

SHAPES_CLASSES = ("ellipse", "rectangle", "triangle")
# RGB label colours for detectron2's Visualizer (metadata "thing_colors"), one per class.
SHAPES_COLORS = ((230, 60, 60), (60, 200, 80), (70, 120, 240))


@dataclass(frozen=True)
class ShapesSpec:
    """How one split of the shapes dataset is drawn."""

    # Number of images.
    num_images: int = 400
    # Image size in pixels (all images have the same size).
    height: int = 128
    width: int = 160
    # Objects per non-empty image: uniform in [1, max_objects] (before placement failures).
    max_objects: int = 4
    # Fraction of images drawn without any object.
    empty_fraction: float = 0.1
    # Object scale sqrt(w * h) in pixels: log-uniform in [min_size, max_size].
    min_size: float = 10.0
    max_size: float = 64.0
    # Largest aspect ratio w / h (and h / w) of an object.
    max_aspect: float = 2.5
    # Largest box IoU between two objects of one image.
    max_iou: float = 0.3
    # Largest fraction of an object's pixels that later objects may cover.
    max_occluded: float = 0.35
    # Seed of the whole split.
    seed: int = 0


# The built-in splits: different seeds, so no validation image is a training image.
SHAPES_SPLITS: Dict[str, ShapesSpec] = {
    "train": ShapesSpec(num_images=4000, seed=0),
    "val": ShapesSpec(num_images=100, seed=1),
}


def _random_color(rng: np.random.Generator, avoid: List[np.ndarray], min_dist: float) -> np.ndarray:
    """A saturated colour (RGB uint8) at L1 distance >= ``min_dist`` from every colour in
    ``avoid`` (best of 50 draws otherwise)."""
    best, best_dist = None, -1.0
    for _ in range(50):
        hsv = np.array(
            [[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(150, 256)]]], np.uint8
        )
        color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.int32)
        dist = min((np.abs(color - a).sum() for a in avoid), default=np.inf)
        if dist >= min_dist:
            return color
        if dist > best_dist:
            best, best_dist = color, dist
    return best


def _shape_mask(
    cls: int, box: Tuple[int, int, int, int], variant: int, height: int, width: int
) -> np.ndarray:
    """Boolean mask (H, W) of shape ``cls`` inscribed in ``box`` = (x0, y0, x1, y1), pixel
    indices, inclusive."""
    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    if cls == 0:  # ellipse
        center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        axes = ((x1 - x0) / 2.0, (y1 - y0) / 2.0)
        # Sub-pixel precision (shift=4) so that small ellipses keep their aspect.
        s = 16
        cv2.ellipse(
            mask,
            (int(round(center[0] * s)), int(round(center[1] * s))),
            (int(round(axes[0] * s)), int(round(axes[1] * s))),
            0,
            0,
            360,
            1,
            thickness=-1,
            shift=4,
        )
    elif cls == 1:  # rectangle
        mask[y0 : y1 + 1, x0 : x1 + 1] = 1
    else:  # isosceles triangle, apex up / down / left / right
        xm, ym = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        pts = {
            0: [(xm, y0), (x1, y1), (x0, y1)],
            1: [(x0, y0), (x1, y0), (xm, y1)],
            2: [(x0, ym), (x1, y0), (x1, y1)],
            3: [(x0, y0), (x1, ym), (x0, y1)],
        }[variant]
        cv2.fillPoly(mask, [np.round(np.array(pts) * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in inclusive pixel indices."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def draw_image(spec: ShapesSpec, index: int) -> Tuple[np.ndarray, List[dict]]:
    """
    Draw image ``index`` of a split.

    Returns:
        image: uint8 (H, W, 3), RGB.
        objects: one dict per object with "category" (index into SHAPES_CLASSES), "bbox"
        (COCO XYWH, tight around the object's pixels) and "area" (its pixel count).
    """
    rng = np.random.default_rng([spec.seed, index])
    h, w = spec.height, spec.width
    # Plain background: a dark or light, low-saturation colour.
    base = rng.integers(0, 60) if rng.random() < 0.7 else rng.integers(190, 256)
    background = np.clip(base + rng.integers(-15, 16, size=3), 0, 255).astype(np.int32)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = background

    num = 0 if rng.random() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
    objects, masks, colors, boxes = [], [], [], []
    label_map = np.full((h, w), -1, np.int32)  # index of the object visible at each pixel
    log_lo, log_hi = np.log(spec.min_size), np.log(spec.max_size)
    for _ in range(num):
        cls = int(rng.integers(len(SHAPES_CLASSES)))
        variant = int(rng.integers(4))
        for _attempt in range(30):
            scale = float(np.exp(rng.uniform(log_lo, log_hi)))
            aspect = float(np.exp(rng.uniform(-1, 1) * np.log(spec.max_aspect)))  # w / h
            bw = int(np.clip(round(scale * np.sqrt(aspect)), 4, w - 2))
            bh = int(np.clip(round(scale / np.sqrt(aspect)), 4, h - 2))
            x0 = int(rng.integers(0, w - bw))
            y0 = int(rng.integers(0, h - bh))
            box = np.array([x0, y0, x0 + bw - 1, y0 + bh - 1])
            if any(_box_iou(box, b) > spec.max_iou for b in boxes):
                continue
            mask = _shape_mask(cls, tuple(int(v) for v in box), variant, h, w)
            # Later objects are drawn on top: every earlier one must stay mostly visible.
            covered = label_map[mask]
            visible_after = [
                (label_map == j).sum() - (covered == j).sum() for j in range(len(masks))
            ]
            if any(v < (1 - spec.max_occluded) * m.sum() for v, m in zip(visible_after, masks)):
                continue
            overlapping = [colors[j] for j in np.unique(covered) if j >= 0]
            color = _random_color(rng, [background] + overlapping, 200)
            ys, xs = np.nonzero(mask)
            objects.append(
                {
                    "category": cls,
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(xs.max() - xs.min() + 1),
                        int(ys.max() - ys.min() + 1),
                    ],
                    "area": int(mask.sum()),
                }
            )
            label_map[mask] = len(masks)
            masks.append(mask)
            colors.append(color)
            boxes.append(box)
            image[mask] = color.astype(np.uint8)
            break
    return image, objects


def _dataset_dict(spec: ShapesSpec, split: str) -> dict:
    return {
        "info": {
            "description": f"atss_d2 synthetic shapes, split {split!r}",
            "generator_version": GENERATOR_VERSION,
            "spec": asdict(spec),
        },
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPES_CLASSES)
        ],
        "images": [],
        "annotations": [],
    }


def _is_current(json_file: Path, spec: ShapesSpec) -> bool:
    """Whether ``json_file`` exists and was written by this generator from ``spec``."""
    try:
        with open(json_file) as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("generator_version") == GENERATOR_VERSION and info.get("spec") == asdict(spec)


def generate_shapes(root: os.PathLike, split: str, spec: Optional[ShapesSpec] = None) -> Path:
    """
    Write split ``split`` of the shapes dataset under ``root/split`` (``annotations.json``
    and ``images/*.png``), unless it is already there from the same spec.

    The split is written to a temporary directory and renamed into place, so concurrent
    callers and interrupted runs never leave a half-written split behind.

    Args:
        root: dataset directory (e.g. ``datasets/shapes``).
        split: split name, a key of :data:`SHAPES_SPLITS` unless ``spec`` is given.
        spec: how to draw it; defaults to ``SHAPES_SPLITS[split]``.

    Returns:
        the split directory, holding ``annotations.json`` and ``images/``.
    """
    if spec is None:
        if split not in SHAPES_SPLITS:
            raise ValueError(
                f"Unknown shapes split {split!r}; expected one of {sorted(SHAPES_SPLITS)}"
            )
        spec = SHAPES_SPLITS[split]
    out_dir = Path(root) / split
    if _is_current(out_dir / "annotations.json", spec):
        return out_dir

    logger.info(f"Writing shapes split {split!r} ({spec.num_images} images) to {out_dir}")
    tmp_dir = Path(root) / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    (tmp_dir / "images").mkdir(parents=True)
    data = _dataset_dict(spec, split)
    ann_id = 1
    for index in range(spec.num_images):
        image, objects = draw_image(spec, index)
        file_name = f"{index:06d}.png"
        cv2.imwrite(str(tmp_dir / "images" / file_name), image[:, :, ::-1])  # RGB -> BGR
        data["images"].append(
            {"id": index + 1, "file_name": file_name, "height": spec.height, "width": spec.width}
        )
        for obj in objects:
            data["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": index + 1,
                    "category_id": obj["category"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    with open(tmp_dir / "annotations.json", "w") as f:
        json.dump(data, f)

    if _is_current(out_dir / "annotations.json", spec):  # another process finished first
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return out_dir
    if out_dir.exists():  # stale: from another spec or generator version
        stale = Path(root) / f".{split}.stale-{os.getpid()}"
        os.replace(out_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        # Lost a race with a concurrent writer of the same split: use its copy.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not _is_current(out_dir / "annotations.json", spec):
            raise
    return out_dir
