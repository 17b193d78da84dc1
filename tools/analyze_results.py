#!/usr/bin/env python
"""
Which classes does the detector confuse? A confusion matrix (confusion_matrix.png) and per-class
precision / recall (per_class.json) of a COCO results file on its dataset, at one IoU and one
score threshold.

    python tools/analyze_results.py --input output/inference/coco_instances_results.json \\
        --dataset shapes_val --output output/analysis
    python tools/analyze_results.py --input out/coco_instances_results.json \\
        --voc-dataset custom_val data/val/Annotations data/val/JPEGImages --dataset custom_val \\
        --output out/analysis --iou-threshold 0.5 --score-threshold 0.3

The matching rule is in atss_d2.analysis.confusion_matrix; the code is
atss_d2.analysis.analyze_results.
"""

import argparse
import os
import sys

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.utils.logger import setup_logger

from atss_d2.analysis import CONFUSION_MATRIX_PNG, PER_CLASS_JSON, analyze_results
from atss_d2.data import add_dataset_arguments, register_datasets_from_args
from atss_d2.utils import iou_arg, score_arg


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--input", required=True, help="COCO results JSON (detections)")
    parser.add_argument("--dataset", required=True, help="name of the dataset the results are of")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--iou-threshold", type=iou_arg, default=0.5, help="lowest IoU of a match, in (0, 1]"
    )
    parser.add_argument(
        "--score-threshold",
        type=score_arg,
        default=0.5,
        help="lowest score of a counted detection, in [0, 1]",
    )
    add_dataset_arguments(parser)
    return parser


def _percent(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="atss_d2", abbrev_name="atss_d2")
    try:
        register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
        report = analyze_results(
            args.input, args.dataset, args.output, args.iou_threshold, args.score_threshold
        )
    except (FileNotFoundError, ValueError) as e:  # ConfigError, VOCAnnotationError among them
        print(f"analyze_results: error: {e}", file=sys.stderr)
        return 1
    print(f"{'class':<20} {'objects':>8} {'dets':>6} {'TP':>6} {'prec %':>7} {'recall %':>8}")
    for c in report["classes"]:
        print(
            f"{c['name']:<20} {c['objects']:>8} {c['detections']:>6} {c['true_positives']:>6} "
            f"{_percent(c['precision']):>7} {_percent(c['recall']):>8}"
        )
    for x in report["confusions"][:10]:
        print(f"confused: {x['ground_truth']} detected as {x['predicted']}: {x['count']}")
    for name in (CONFUSION_MATRIX_PNG, PER_CLASS_JSON):
        print(f"Wrote {os.path.join(args.output, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
