"""
Training and evaluation with detectron2's flags: the code of the repository's ``train_net.py``
and of the ``atss-train`` command.

    atss-train --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml --num-gpus 8
    atss-train --config-file ... --eval-only MODEL.WEIGHTS /path/to/model.pth
    atss-train --config-file configs/COCO-Detection/atss_R_50_FPN_1x.py train.max_iter=1000
    atss-train --config-file configs/Custom/atss_R_18_FPN_cpu.yaml \\
        --voc-dataset custom_train data/Annotations data/JPEGImages MODEL.ATSS.NUM_CLASSES 3

The shape of detectron2's ``train_net.py``: ``setup``, ``main``, ``get_parser``, ``cli``; the
trainer is :class:`atss_d2.engine.ATSSTrainer`, the dataset flags register through
:func:`atss_d2.data.register_datasets_from_args`. ``--config-file`` also takes the name of a
shipped config (``atss_d2.model_zoo``), e.g. ``COCO-Detection/atss_R_50_FPN_1x.yaml``. A ``.py``
config (LazyConfig: ``key=value`` overrides, ``train.init_checkpoint`` for ``--eval-only``) runs
the flow of :mod:`atss_d2.engine.lazy`.
"""

import os
import sys

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import add_atss_config, model_zoo
from .checkpoint import CheckpointReadError, UnsafeCheckpointError, WeightsNotFoundError
from .data import add_dataset_arguments, register_datasets_from_args
from .engine import (
    ATSSTrainer,
    ConfigError,
    launch,
    lazy,
    merge_config_file,
    merge_config_opts,
    validate_config,
)

# detectron2's train_net.py calls its trainer "Trainer"; atss_d2's needs no changes here.
Trainer = ATSSTrainer


def resolve_config_file(path: str) -> str:
    """``path`` as given if it is a file, else the shipped config of that name (if any)."""
    if os.path.isfile(path):
        return path
    try:
        return model_zoo.get_config_file(path)
    except FileNotFoundError:
        return path  # merge_config_file names it


def setup(args):
    args.config_file = resolve_config_file(args.config_file)  # default_setup reads it too
    cfg = get_cfg()
    add_atss_config(cfg)
    merge_config_file(
        cfg, resolve_config_file(args.config_file)
    )  # errors name the file and the key
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
    args.config_file = resolve_config_file(args.config_file)
    if lazy.is_lazy_config(args.config_file):
        return lazy.main(args)  # LazyConfig flow: key=value overrides, train.* keys
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
    return add_dataset_arguments(parser)  # --coco-dataset, --voc-dataset, --classes


def cli(argv=None):
    """The command line (``train_net.py`` and the ``atss-train`` command): parse, launch, and
    turn the errors a user can fix into one line and a non-zero exit."""
    prog = os.path.basename(sys.argv[0]) or "train_net.py"
    args = get_parser().parse_args(argv)
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
        sys.exit(f"{prog}: config error: {e}")
    except (WeightsNotFoundError, CheckpointReadError, UnsafeCheckpointError) as e:
        sys.exit(f"{prog}: error: {e}")
