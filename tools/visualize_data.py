#!/usr/bin/env python
"""
Draw the training images of an atss_d2 config with their boxes and class names, as detectron2's
tools/visualize_data.py does (which rejects atss_d2 configs: it does not add MODEL.ATSS).

    python tools/visualize_data.py --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \\
        --source annotation --output-dir vis/annotation
    python tools/visualize_data.py --config-file configs/Custom/atss_R_18_FPN_cpu.yaml \\
        --voc-dataset custom_train data/Annotations data/JPEGImages \\
        --source dataloader --output-dir vis/dataloader MODEL.ATSS.NUM_CLASSES 3

``--source annotation``: the DATASETS.TRAIN dicts as loaded, at the image's size;
``--source dataloader``: after the training loader (ATSSDatasetMapper's resizing, flips and box
cleaning). The code is atss_d2.visualize.visualize_data.
"""

import argparse
import sys

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.utils.logger import setup_logger

from atss_d2.data import add_dataset_arguments, register_datasets_from_args
from atss_d2.utils import count_arg
from atss_d2.visualize import SOURCES, NoDisplayError, build_config, visualize_data


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument(
        "--source",
        choices=SOURCES,
        required=True,
        help="the annotations as loaded, or the images and boxes after the training loader",
    )
    parser.add_argument("--output-dir", help="directory of the PNGs, one per image")
    parser.add_argument(
        "--show", action="store_true", help="show each image in a window (a key: next; Esc: stop)"
    )
    parser.add_argument(
        "--num-images", type=count_arg, help="draw at most this many images (default: all)"
    )
    add_dataset_arguments(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if not (args.output_dir or args.show):
        parser.error("give --output-dir and/or --show")
    setup_logger(name="atss_d2", abbrev_name="atss_d2")
    try:
        register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
        cfg = build_config(args.config_file, args.opts)
        paths = visualize_data(cfg, args.source, args.output_dir, args.show, args.num_images)
    except (FileNotFoundError, ValueError, NoDisplayError) as e:  # ConfigError among them
        print(f"visualize_data: error: {e}", file=sys.stderr)
        return 1
    if args.output_dir:
        print(f"Wrote {len(paths)} images to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
