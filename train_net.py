#!/usr/bin/env python
"""
Train and evaluate ATSS with detectron2.

    python train_net.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model.pth
    python train_net.py --config-file configs/Custom/atss_R_18_FPN_cpu.yaml \
        --voc-dataset custom_train data/Annotations data/JPEGImages MODEL.ATSS.NUM_CLASSES 3

Everything but argument parsing lives in atss_d2: the trainer (atss_d2.engine.ATSSTrainer) and
the dataset registration of --coco-dataset / --voc-dataset (atss_d2.data).
"""

import sys

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import atss_d2
from atss_d2.checkpoint import CheckpointReadError, UnsafeCheckpointError, WeightsNotFoundError
from atss_d2.data import register_datasets_from_args
from atss_d2.engine import (
    ATSSTrainer,
    ConfigError,
    launch,
    merge_config_file,
    merge_config_opts,
    validate_config,
)

# detectron2's train_net.py calls its trainer "Trainer"; atss_d2's needs no changes here.
Trainer = ATSSTrainer


def setup(args):
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    merge_config_file(cfg, args.config_file)  # errors name the file and the key
    merge_config_opts(cfg, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # atss_d2's own messages (what a weights file left from scratch, data warnings) go to the
    # console and log.txt, as detectron2's do.
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="atss_d2", abbrev_name="atss_d2"
    )
    return cfg


def main(args):
    register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    cfg = setup(args)
    validate_config(cfg, train=not args.eval_only)  # datasets, NUM_CLASSES: before building

    if args.eval_only:
        res = ATSSTrainer.evaluate_weights(cfg, resume=args.resume)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = ATSSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset under NAME (repeatable), so that "
        "DATASETS.TRAIN / DATASETS.TEST can name it",
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
        help="class names (and their order) of the --voc-dataset folders; default: the sorted "
        "union of the names in their XML files",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ConfigError as e:
        sys.exit(f"train_net.py: config error: {e}")
    except (WeightsNotFoundError, CheckpointReadError, UnsafeCheckpointError) as e:
        sys.exit(f"train_net.py: error: {e}")
