#!/usr/bin/env python
"""
Draw the ground truth and the detections of a COCO results file side by side, one PNG per image
of the dataset, as detectron2's tools/visualize_json_results.py does, for atss_d2's datasets.

    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \\
        --dataset shapes_val --output vis/results
    python tools/visualize_json_results.py --input out/coco_instances_results.json \\
        --voc-dataset custom_val data/val/Annotations data/val/JPEGImages --dataset custom_val \\
        --output vis/results --conf-threshold 0.3

Left: the ground truth; right: the detections with score >= --conf-threshold. Category ids are
mapped to the dataset's classes through its thing_dataset_id_to_contiguous_id when it has one
(COCO-format datasets), as COCOEvaluator wrote them. The code is
atss_d2.visualize.visualize_json_results.
"""

import argparse
import sys

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.utils.logger import setup_logger

from atss_d2.data import add_dataset_arguments, register_datasets_from_args
from atss_d2.utils import count_arg, score_arg
from atss_d2.visualize import visualize_json_results


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--input", required=True, help="COCO results JSON (detections)")
    parser.add_argument("--dataset", required=True, help="name of the dataset the results are of")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--conf-threshold",
        type=score_arg,
        default=0.5,
        help="lowest score of a drawn detection, in [0, 1]",
    )
    parser.add_argument(
        "--num-images", type=count_arg, help="draw at most this many images (default: all)"
    )
    add_dataset_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="atss_d2", abbrev_name="atss_d2")
    try:
        register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
        paths = visualize_json_results(
            args.input, args.dataset, args.output, args.conf_threshold, args.num_images
        )
    except (FileNotFoundError, ValueError) as e:  # ConfigError, VOCAnnotationError among them
        print(f"visualize_json_results: error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {len(paths)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
