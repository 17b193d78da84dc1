#!/usr/bin/env python
"""
Train and evaluate ATSS with detectron2.

    python train_net.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model.pth
    python train_net.py --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \
        --coco-dataset my_train data/train.json data/images DATASETS.TRAIN "('my_train',)"
"""

import logging
import os
import sys
from collections import OrderedDict

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import atss_d2
from atss_d2.data import register_coco_dataset
from atss_d2.engine import (
    ATSSTrainer,
    ConfigError,
    merge_config_file,
    merge_config_opts,
    validate_config,
)
from atss_d2.modeling import ATSSWithTTA
from atss_d2.solver import build_optimizer


class Trainer(ATSSTrainer):
    """Robust data, atomic checkpoints, config checks, COCO evaluation: see ATSSTrainer."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SOLVER.OPTIMIZER: detectron2's SGD or AdamW (see atss_d2.solver)."""
        return build_optimizer(cfg, model)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with test-time augmentation (TEST.AUG); results keyed "<dataset>_TTA"."""
        logging.getLogger("atss_d2").info("Running inference with test-time augmentation ...")
        model = ATSSWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder) for name in cfg.DATASETS.TEST]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def setup(args):
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    merge_config_file(cfg, args.config_file)  # errors name the file and the key
    merge_config_opts(cfg, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    for name, json_file, image_root in args.coco_dataset or []:
        register_coco_dataset(name, json_file, image_root)
    cfg = setup(args)
    validate_config(cfg, train=not args.eval_only)  # datasets, NUM_CLASSES: before building

    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Loads MODEL.WEIGHTS without unpickling code (SafeDetectionCheckpointer).
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
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
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    logging.getLogger("atss_d2").setLevel(logging.INFO)
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
