"""
The command line of the demo: the code of the repository's ``demo/demo.py`` and of the
``atss-demo`` command (argument parsing and the calls into :mod:`atss_d2.demo`).

    atss-demo --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \\
        --input img1.png "more/*.png" photos/ --output out/ --save-json out/detections.json \\
        --opts MODEL.WEIGHTS output/demo/model_final.pth
    atss-demo --config-file ... --video-input clip.mp4 --output out/clip.mp4 --opts ...
    atss-demo --config-file ... --webcam --opts ...

The boxes are labelled with the class names of the dataset given with ``--coco-dataset`` or
``--voc-dataset`` (the first one), else of ``--classes``, else of ``DATASETS.TEST[0]``, else
"class 0", "class 1", ... Inputs that fail are named and the others still written; the exit
status is then 1. See docs/DEMO.md.
"""

import argparse
import logging
import os
import sys
from typing import List

from detectron2.utils.logger import setup_logger

from .config_checks import ConfigError, check_atss_config
from .data import VOCAnnotationError, add_dataset_arguments
from .demo import (
    ClassNamesError,
    DemoFailed,
    InputError,
    VisualizationDemo,
    class_metadata,
    dataset_image_ids,
    expand_inputs,
    model_score_threshold,
    names_source,
    output_paths,
    run_demo,
    run_on_image_files,
    run_on_video,
    video_output_path,
)
from .engine import SafePredictor, lazy
from .engine.config import check_device
from .engine.predictor import check_class_names
from .train_net import load_yaml_config, one_line_error, register_datasets, resolve_config_file
from .utils import score_arg


def setup_cfg(args):
    """The config of ``--config-file`` (a YAML file, or a shipped config's name) and ``--opts``;
    errors name the file and the key (:class:`~atss_d2.engine.ConfigError`), e.g. a CUDA
    ``MODEL.DEVICE`` on a machine without CUDA."""
    if lazy.is_lazy_config(resolve_config_file(args.config_file)):
        raise ConfigError(
            f"--config-file {args.config_file} is a LazyConfig (a .py file, or the "
            "config.yaml a LazyConfig run saved); the demo takes a YAML config: the .yaml of "
            "the same model (e.g. configs/Shapes/atss_R_18_FPN_shapes.yaml "
            "for configs/Shapes/atss_R_18_FPN_shapes.py)"
        )
    cfg = load_yaml_config(args.config_file, args.opts)
    check_atss_config(cfg)
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE", "set MODEL.DEVICE cpu (--opts MODEL.DEVICE cpu)")
    # The threshold is applied to the final (drawn) score after the model; the model's own
    # threshold on p_cls only comes down where it would drop a detection that could pass.
    cfg.MODEL.ATSS.SCORE_THRESH_TEST = model_score_threshold(cfg, args.confidence_threshold)
    cfg.freeze()
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description="atss_d2 demo: draw ATSS detections")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        help="image files, directories (their images, sorted by name) or glob patterns, e.g. "
        "'dir/*.png' (quoted)",
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument(
        "--webcam", action="store_true", help="the first webcam (cv2.VideoCapture(0))"
    )
    parser.add_argument(
        "--output",
        help="a directory for the drawn images or video, or a file name for a single input "
        "(an image extension for images, .mp4/.avi for a video); without it, --webcam shows a "
        "window",
    )
    parser.add_argument(
        "--save-json",
        metavar="FILE",
        help="write the detections of all inputs in COCO results format (image_id, "
        "category_id, bbox XYWH, score), with each image's file_name",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=score_arg,
        default=0.5,
        help="minimum (drawn) score of the detections drawn and saved, in [0, 1]",
    )
    add_dataset_arguments(
        parser,
        classes_help="comma-separated class names: the class order of --voc-dataset folders "
        "(default: their sorted union), or, without a dataset flag, the names of the drawn "
        "classes; the first dataset given names the drawn classes",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def main(argv=None) -> List[str]:
    """Returns the files written; raises :class:`DemoFailed` after writing them when inputs
    failed."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if not (args.output or args.save_json or args.webcam):
        parser.error("give --output and/or --save-json")
    setup_logger(name="fvcore")
    setup_logger(name="atss_d2", abbrev_name="atss_d2")
    logger = setup_logger()
    logger.info("Arguments: " + str(args))

    registered = register_datasets(args)  # DataError naming the file or flag
    cfg = setup_cfg(args)
    if registered or args.classes:  # names given are checked before the model is built
        class_metadata(cfg, registered, args.classes)
    failures: List[str] = []
    if args.input:
        paths, failures = expand_inputs(args.input)
        outputs = output_paths(paths, args.output)  # names: images are read one at a time
        if not paths:  # nothing to run a model on
            metadata = class_metadata(cfg, registered, args.classes)
            return run_demo([], metadata, args.save_json, failures)
    predictor = SafePredictor(cfg)
    # The class names saved with the weights name the boxes when nothing else does, and must
    # match (in order) those given.
    metadata = class_metadata(cfg, registered, args.classes, predictor.checkpoint_classes)
    if metadata.name != "MODEL.WEIGHTS":
        names, source = metadata.get("thing_classes"), names_source(metadata)
        check_class_names(cfg.MODEL.WEIGHTS, predictor.checkpoint_classes, names, source)
    demo = VisualizationDemo(predictor, metadata, args.confidence_threshold)
    if args.input:
        results = run_on_image_files(demo, paths, outputs)
    elif args.video_input:
        results = run_on_video(
            demo, args.video_input, video_output_path(args.video_input, args.output)
        )
    else:
        output = video_output_path("webcam", args.output)
        results = run_on_video(demo, 0, output, show=output is None)
    # The image ids of the dataset that names the classes go into --save-json when the inputs
    # are its images, for the tools that read COCO results of that dataset.
    image_ids = dataset_image_ids(metadata.name) if args.save_json else None
    return run_demo(results, metadata, args.save_json, failures, image_ids)


def cli(argv=None) -> None:
    """The command line (``demo/demo.py`` and the ``atss-demo`` command): failures a user can
    fix end in one line each and exit status 1, after the inputs that worked were written."""
    prog = os.path.basename(sys.argv[0]) or "demo.py"
    try:
        main(argv)
    except DemoFailed as e:
        print(f"{prog}: {e}", file=sys.stderr)  # every failure, after the outputs were written
        sys.exit(1)
    except Exception as e:
        # train_net.py's one-line errors (config, data, weights), and the demo's own inputs.
        line = one_line_error(e)
        if line is None and isinstance(e, _DEMO_ERRORS):
            line = f"error: {e}"
        if line is None:
            raise  # a bug: the traceback is needed
        logging.getLogger("detectron2").error(str(e))
        sys.exit(f"{prog}: {line}")


# What the demo's inputs can get wrong, beside train_net.py's one-line errors.
_DEMO_ERRORS = (InputError, ClassNamesError, VOCAnnotationError, FileNotFoundError)
