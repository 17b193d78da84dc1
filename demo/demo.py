#!/usr/bin/env python
"""
Run an ATSS model on images and write them with the detections drawn.

    python demo/demo.py --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \
        --input img1.png img2.png --output out/ \
        --opts MODEL.WEIGHTS output/demo/model_final.pth

The boxes are labelled with the class names of the dataset given with ``--coco-dataset`` or
``--voc-dataset`` (the first one), else of ``--classes``, else of ``DATASETS.TEST[0]``.
"""

import argparse
import glob
import logging
import os
import sys
import time
from collections import Counter
from typing import List, Optional

import cv2
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

import atss_d2
from atss_d2.data import VOCAnnotationError, parse_class_names, register_datasets_from_args
from atss_d2.engine import SafePredictor


class UnreadableImageError(ValueError):
    """An input image is missing or cannot be decoded."""


class ClassNamesError(ValueError):
    """The class names for the drawn boxes are not as many as the model's classes."""


def setup_cfg(args):
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.ATSS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description="atss_d2 demo: draw ATSS detections on images")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files or glob patterns, e.g. 'dir/*.png' (quoted)",
    )
    parser.add_argument("--output", required=True, help="directory for the annotated images")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the drawn detections",
    )
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset under NAME (repeatable); the first dataset given "
        "names the drawn classes",
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
        help="comma-separated class names: the class order of --voc-dataset folders (default: "
        "their sorted union), or, without a dataset flag, the names of the drawn classes",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def expand_inputs(patterns: List[str]) -> List[str]:
    """Expand glob patterns; plain paths are kept (and reported if unreadable)."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        paths.extend(matches if matches else [pattern])
    return paths


def load_image(path: str) -> np.ndarray:
    """Read ``path`` as BGR uint8 (H, W, 3), or raise an error that names the file."""
    if not os.path.isfile(path):
        raise UnreadableImageError(f"input image not found: {path}")
    try:
        return read_image(path, format="BGR")
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for bad files
        raise UnreadableImageError(f"cannot read input image {path}: {e}") from e


def output_paths(inputs: List[str], output_dir: str) -> List[str]:
    """One output per input, named after it; repeated names get a numeric suffix."""
    seen, outs = {}, []
    for path in inputs:
        stem, ext = os.path.splitext(os.path.basename(path))
        ext = ext if ext.lower() in (".png", ".jpg", ".jpeg", ".bmp") else ".png"
        n = seen.get(stem + ext, 0)
        seen[stem + ext] = n + 1
        outs.append(os.path.join(output_dir, stem + (f"_{n}" if n else "") + ext))
    return outs


def class_metadata(cfg, registered: List[str], classes: Optional[str]) -> Metadata:
    """The metadata whose ``thing_classes`` label the drawn boxes (see the module docstring);
    raises :class:`ClassNamesError` if they are not ``MODEL.ATSS.NUM_CLASSES`` names."""
    if registered:
        metadata = MetadataCatalog.get(registered[0])
    elif classes:
        metadata = Metadata(name="--classes", thing_classes=parse_class_names(classes))
    else:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    names = metadata.get("thing_classes")
    if names is not None and len(names) != cfg.MODEL.ATSS.NUM_CLASSES:
        source = "--classes" if metadata.name == "--classes" else f"dataset {metadata.name!r}"
        raise ClassNamesError(
            f"{source} has {len(names)} class names {names[:8]}, but the model has "
            f"MODEL.ATSS.NUM_CLASSES {cfg.MODEL.ATSS.NUM_CLASSES}"
        )
    return metadata


def describe(instances, metadata: Metadata) -> str:
    """ " (cat x2, dog)": the classes of the detections, most frequent first."""
    if not len(instances):
        return ""
    names = metadata.get("thing_classes") or []
    labels = [names[c] if c < len(names) else f"class {c}" for c in instances.pred_classes.tolist()]
    counts = Counter(labels).most_common()
    return " (" + ", ".join(n if k == 1 else f"{n} x{k}" for n, k in counts) + ")"


def main(argv=None) -> List[str]:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="atss_d2", abbrev_name="atss_d2")  # e.g. "the head is randomly initialised"
    logger = setup_logger()
    logger.info("Arguments: " + str(args))

    registered = register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    inputs = expand_inputs(args.input)
    images = [load_image(path) for path in inputs]  # fail before building the model
    cfg = setup_cfg(args)
    metadata = class_metadata(cfg, registered, args.classes)
    predictor = SafePredictor(cfg)
    # Class colours when the dataset defines them, otherwise detectron2's random ones.
    mode = ColorMode.SEGMENTATION if metadata.get("thing_colors") else ColorMode.IMAGE

    os.makedirs(args.output, exist_ok=True)
    outs = output_paths(inputs, args.output)
    for path, image, out in zip(inputs, images, outs):
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=mode)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        if not cv2.imwrite(out, drawn[:, :, ::-1]):
            raise OSError(f"could not write {out}")
        logger.info(
            f"{path}: {len(instances)} detections{describe(instances, metadata)} in "
            f"{time.perf_counter() - start:.2f}s -> {out}"
        )
    return outs


if __name__ == "__main__":
    try:
        main()
    except (UnreadableImageError, ClassNamesError, VOCAnnotationError, FileNotFoundError) as e:
        logging.getLogger("detectron2").error(str(e))
        sys.exit(f"demo.py: error: {e}")
