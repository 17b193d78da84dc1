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

Errors a user fixes in a file, a flag or the config end in one line and exit status 1, also when
raised in a DataLoader worker or in a process of ``--num-gpus N``: config errors, datasets that
cannot be registered, unreadable images or sizes that do not fit the annotation, weights files
that are missing, unreadable or of another number of classes (``--eval-only``). The traceback of
one raised during training stays in ``log.txt``.
"""

import logging
import os
import sys
from typing import Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessRaisedException

from . import add_atss_config, model_zoo
from .checkpoint import CheckpointReadError, UnsafeCheckpointError, WeightsNotFoundError
from .checkpoint.detection_checkpoint import IncompatibleWeightsError
from .config_checks import check_atss_config
from .data import add_dataset_arguments, register_datasets_from_args
from .data.mapper import DatasetAnnotationError, UnreadableImageError
from .engine import (
    ATSSTrainer,
    ConfigError,
    launch,
    lazy,
    merge_config_file,
    merge_config_opts,
    validate_config,
)
from .engine.config import check_device, check_solver_batch

# detectron2's train_net.py calls its trainer "Trainer"; atss_d2's needs no changes here.
Trainer = ATSSTrainer


class DataError(Exception):
    """A dataset of the command line that cannot be registered (a missing or malformed
    annotation file, a missing image directory, a bad ``--classes``); the message names it."""


def register_datasets(args):
    """:func:`register_datasets_from_args` for the dataset flags of ``args``; its errors (all
    about the files and flags given) raise :class:`DataError` with the same message."""
    try:
        return register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    except (ValueError, OSError) as e:  # VOCAnnotationError and the COCO checks: ValueError
        raise DataError(str(e)) from e


SKIP_HINT = (
    "DATALOADER.SKIP_UNREADABLE_IMAGES True skips unreadable training images (with a counted "
    "warning); evaluation reads every image"
)
# The errors cli ends in one line, with the word that introduces them.
ONE_LINE_ERRORS = (
    (ConfigError, "config error"),
    (DataError, "data error"),
    (UnreadableImageError, "data error"),
    (SizeMismatchError, "data error"),
    (DatasetAnnotationError, "data error"),
    (WeightsNotFoundError, "error"),
    (CheckpointReadError, "error"),
    (UnsafeCheckpointError, "error"),
    (IncompatibleWeightsError, "error"),
)


def _from_traceback(text: str):
    """(class, kind, message) of the error on the last line of a formatted traceback
    ("module.Name: message") when it is one of ``ONE_LINE_ERRORS``, else None."""
    lines = text.rstrip().splitlines()
    for cls, kind in ONE_LINE_ERRORS:
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        if lines and lines[-1].startswith(prefix):
            return cls, kind, lines[-1][len(prefix) :]
    return None


def one_line_error(error: BaseException) -> Optional[str]:
    """
    The line cli ends with for ``error`` ("config error: ...", "data error: ...",
    "error: ..."), or None for an error that keeps its traceback. An error that torch re-raised
    from a DataLoader worker ("Caught X in DataLoader worker process N. Original Traceback
    ...") gives the worker's original message; one raised in a process of ``--num-gpus N``
    (``ProcessRaisedException``, holding the process's traceback as text) gives that error's.
    """
    if isinstance(error, ProcessRaisedException):
        found = _from_traceback(error.msg)
    else:
        found = next(
            ((cls, kind, str(error)) for cls, kind in ONE_LINE_ERRORS if isinstance(error, cls)),
            None,
        )
        if found and found[2].startswith("Caught ") and "in DataLoader worker process" in found[2]:
            found = _from_traceback(found[2]) or found
    if found is None:
        return None
    cls, kind, message = found
    if issubclass(cls, UnreadableImageError) and "skipped as unreadable" not in message:
        message = f"{message} ({SKIP_HINT})"
    return f"{kind}: {message}"


class _OneLineErrorsToLogFiles(logging.Filter):
    """
    On detectron2's training-loop logger, whose "Exception during training" record carries the
    traceback: for an error that cli ends in one line, the record goes to the log files only
    (``log.txt`` keeps the traceback), not to the console.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or one_line_error(record.exc_info[1]) is None:
            return True
        logger = logging.getLogger(record.name)
        while logger is not None:
            for handler in logger.handlers:
                if _is_log_file(handler) and record.levelno >= handler.level:
                    handler.handle(record)
            logger = logger.parent if logger.propagate else None
        return False


def _is_log_file(handler: logging.Handler) -> bool:
    # detectron2's setup_logger writes log.txt through a StreamHandler on an open file.
    name = getattr(getattr(handler, "stream", None), "name", None)
    return isinstance(handler, logging.FileHandler) or (
        isinstance(name, str) and os.path.isfile(name)
    )


def _keep_one_line_errors_off_console() -> None:
    logger = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _OneLineErrorsToLogFiles) for f in logger.filters):
        logger.addFilter(_OneLineErrorsToLogFiles())


def resolve_config_file(path: str) -> str:
    """``path`` as given if it is a file, else the shipped config of that name (if any)."""
    if os.path.isfile(path):
        return path
    try:
        return model_zoo.get_config_file(path)
    except FileNotFoundError:
        return path  # merge_config_file names it


def load_yaml_config(config_file: str, opts) -> CfgNode:
    """detectron2's config with atss_d2's keys, ``config_file`` (a path, or a shipped config's
    name) and the ``KEY VALUE`` overrides ``opts`` merged in; errors name the file and the key
    (:class:`~atss_d2.engine.ConfigError`)."""
    cfg = get_cfg()
    add_atss_config(cfg)
    merge_config_file(cfg, resolve_config_file(config_file))
    merge_config_opts(cfg, opts)
    return cfg


def setup(args):
    args.config_file = resolve_config_file(args.config_file)  # default_setup reads it too
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # atss_d2's own messages (what a weights file left from scratch, data warnings) go to the
    # console and log.txt, as detectron2's do.
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="atss_d2", abbrev_name="atss_d2"
    )
    return cfg


def main(args):
    _keep_one_line_errors_off_console()
    register_datasets(args)
    args.config_file = resolve_config_file(args.config_file)
    if lazy.is_lazy_config(args.config_file):
        return lazy.main(args)  # LazyConfig flow: key=value overrides, train.* keys
    cfg = setup(args)
    validate_config(cfg, train=not args.eval_only)  # datasets, NUM_CLASSES: before building

    if args.eval_only:
        res = ATSSTrainer.evaluate_weights(cfg, resume=args.resume)
        if comm.is_main_process() and cfg.TEST.EXPECTED_RESULTS:
            # verify_results reads task -> metric, as DefaultTrainer.test returns the results
            # of one dataset; evaluate_weights keys them by dataset (validate_config: just one).
            verify_results(cfg, res[cfg.DATASETS.TEST[0]])
        return res

    trainer = ATSSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_before_launch(args) -> None:
    """
    The checks of a YAML config that need no dataset (the ``MODEL.ATSS`` values, ``MODEL.DEVICE``
    on this machine, a training batch that divides among the processes), in the launching
    process: a run of ``--num-gpus N`` that would stop on them stops before N processes start.
    Each process checks everything again.

    Raises:
        ConfigError: naming the file or key.
    """
    if lazy.is_lazy_config(resolve_config_file(args.config_file)):
        return  # the LazyConfig flow checks its config before it builds anything
    cfg = load_yaml_config(args.config_file, args.opts)
    check_atss_config(cfg)
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE", "set MODEL.DEVICE cpu")
    if not args.eval_only:
        check_solver_batch(cfg, args.num_gpus * args.num_machines)


def get_parser():
    parser = default_argument_parser()
    return add_dataset_arguments(parser)  # --coco-dataset, --voc-dataset, --classes


def cli(argv=None):
    """The command line (``train_net.py`` and the ``atss-train`` command): parse, launch, and
    turn the errors a user can fix into one line and a non-zero exit (:func:`one_line_error`)."""
    prog = os.path.basename(sys.argv[0]) or "train_net.py"
    args = get_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        if args.num_gpus * args.num_machines > 1:
            check_before_launch(args)  # once, before starting the processes
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except Exception as e:
        line = one_line_error(e)
        if line is None:
            raise  # a bug, not the user's data: the traceback is needed
        sys.exit(f"{prog}: {line}")
