"""
Training and evaluation from a LazyConfig file (a ``.py`` config), in the flow of detectron2's
``tools/lazyconfig_train_net.py``, with atss_d2's pieces:

    python train_net.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.py --num-gpus 8
    python train_net.py --config-file configs/Shapes/atss_R_18_FPN_shapes.py train.max_iter=100
    python train_net.py --config-file ....py --eval-only train.init_checkpoint=model_final.pth
    python train_net.py --config-file output/config.yaml ...   # the config a run saved

A config defines ``model``, ``dataloader.train`` / ``test`` / ``evaluator``, ``optimizer``
(``params.model`` is set to the model here), ``lr_multiplier`` (a ``ParamScheduler`` over the
fraction of training done) and ``train`` (the keys of ``configs/common/train.py``). Overrides
are ``key=value`` (detectron2's ``LazyConfig.apply_overrides``); a key that does not exist is
refused, naming close ones, and so is a new argument of a call (a node with ``_target_``) that
its target does not accept.

Training runs detectron2's ``SimpleTrainer`` (with ``train.amp.enabled``: ``AMPTrainer`` on
CUDA, the bfloat16 ``CPUAMPTrainer`` on the CPU) with the hooks of ``lazyconfig_train_net.py``
(IterationTimer, LRScheduler, PeriodicCheckpointer, EvalHook, PeriodicWriter) and, as
:class:`~atss_d2.engine.ATSSTrainer`, checkpoints written atomically and read without unpickling
code (:class:`SafeAtomicCheckpointer`) and a clean stop on SIGINT / SIGTERM
(:class:`~atss_d2.engine.stop.StopOnSignal`). Several CPU processes (``--num-gpus N`` without
CUDA) train with ``train.device=cpu``.
"""

import difflib
import inspect
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    SimpleTrainer,
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .amp import amp_trainer_class
from .checkpoint import SafeAtomicCheckpointer
from .config import (
    ConfigError,
    check_batch_divisible,
    check_dataset_classes,
    check_dataset_images,
    check_datasets_registered,
    check_device,
)
from .predictor import check_weights_for_inference
from .stop import StopOnSignal

__all__ = [
    "apply_overrides",
    "build_trainer",
    "check_lazy_config",
    "do_test",
    "do_train",
    "evaluate",
    "is_lazy_config",
    "load_lazy_config",
    "main",
    "setup",
]

logger = logging.getLogger(__name__)

# What the flow reads; ``dataloader.test`` and ``dataloader.evaluator`` only for evaluation.
_REQUIRED = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
_REQUIRED_TRAIN = ("output_dir", "init_checkpoint", "max_iter", "device")


# Top-level sections of a LazyConfig; a YAML (yacs) config's keys are upper case (MODEL, ...).
_LAZY_SECTIONS = {"model", "dataloader", "train"}
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.M)


def is_lazy_config(path: str) -> bool:
    """
    Whether ``path`` names a LazyConfig rather than a yacs YAML config: a ``.py`` file, or a
    ``.yaml`` file with LazyConfig sections (``model``, ``dataloader``, ``train``), such as the
    ``config.yaml`` that detectron2's ``default_setup`` writes into ``train.output_dir`` of a
    LazyConfig run (``LazyConfig.save``), which ``LazyConfig.load`` reads back.
    """
    extension = os.path.splitext(str(path))[1]
    if extension == ".py":
        return True
    if extension not in (".yaml", ".yml") or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    # The file may hold python tags (``!!python/name:torch.optim.AdamW``) that safe YAML
    # loading refuses: look at the top-level keys only.
    keys = set(_TOP_LEVEL_KEY.findall(text))
    return "_target_" in text and len(keys & _LAZY_SECTIONS) >= 2


def _keys(tree: Any, prefix: str = "") -> List[str]:
    """Every dotted key of a (plain) nested dict, lists not entered."""
    if not isinstance(tree, dict):
        return []
    keys = []
    for k, v in tree.items():
        keys.append(prefix + str(k))
        keys.extend(_keys(v, f"{prefix}{k}."))
    return keys


_ABSENT = object()


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _ABSENT)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _ABSENT


def _find(tree: Any, key: str) -> Tuple[bool, Any]:
    """(whether dotted ``key`` exists in a plain nested dict / list tree, the node that holds
    or would hold it: None when that is missing too)."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = _child(node, part)
        if node is _ABSENT:
            return False, None
    return _child(node, leaf) is not _ABSENT, node


def _check_new_argument(option: str, key: str, call: dict) -> None:
    """A new argument ``key`` of the LazyCall node ``call`` must be one its target accepts."""
    target = call["_target_"]
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:  # an unimportable target fails when instantiated, with its name
            return
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    *prefix, name = key.split(".")
    if name in parameters:
        return
    accepted = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    close = difflib.get_close_matches(name, accepted, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join('.'.join([*prefix, c]) for c in close)}?" if close else ""
    raise ConfigError(
        f"override {option!r}: {key} is neither in the config nor an argument of "
        f"{getattr(target, '__qualname__', target)} (its arguments: {', '.join(accepted)}){hint}"
    )


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """
    ``LazyConfig.apply_overrides(cfg, overrides)`` (``key=value``, values in Hydra's grammar:
    ``train.max_iter=100``, ``model.pixel_std=[1,1,1]``), refusing with :class:`ConfigError`
    what would otherwise be silently added or fail obscurely: an option without ``=`` (e.g.
    YAML-style ``KEY VALUE`` pairs), a key that does not exist (unless it is a new argument
    that the call's target accepts), a value Hydra cannot parse.
    """
    tree = OmegaConf.to_container(cfg, resolve=False)
    for option in overrides:
        key, sep, _ = option.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {option!r}: a LazyConfig (.py) file takes key=value overrides, e.g. "
                "train.max_iter=1000 (KEY VALUE pairs are for .yaml configs)"
            )
        found, parent = _find(tree, key)
        if found:
            continue
        if isinstance(parent, dict) and "_target_" in parent:
            _check_new_argument(option, key, parent)
            continue
        close = difflib.get_close_matches(key, _keys(tree), n=2, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"override {option!r}: the config has no key {key}{hint}")
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:  # Hydra's parse errors, OmegaConf's validation errors
        raise ConfigError(f"overrides {list(overrides)}: {type(e).__name__}: {e}") from e


def load_lazy_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``LazyConfig.load(path)`` with :func:`apply_overrides`; a missing file or a config
    without the sections training reads is a :class:`ConfigError`."""
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    cfg = LazyConfig.load(path)
    missing = [k for k in _REQUIRED if k not in cfg]
    missing += [f"train.{k}" for k in _REQUIRED_TRAIN if "train" in cfg and k not in cfg.train]
    if missing:
        raise ConfigError(
            f"{path} defines no {', '.join(missing)}: a LazyConfig for atss_d2's train_net.py "
            "defines model, dataloader, optimizer, lr_multiplier and train (see "
            "configs/COCO-Detection/atss_R_50_FPN_1x.py)"
        )
    return apply_overrides(cfg, overrides)


def _dataset_names(loader_cfg) -> List[str]:
    """The dataset names of a loader config built on ``get_detection_dataset_dicts``."""
    names = OmegaConf.select(loader_cfg, "dataset.names", default=None)
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def check_lazy_config(cfg: DictConfig, *, train: bool = True) -> None:
    """
    Check before anything is built, as :func:`~atss_d2.engine.validate_config` does for YAML:
    ``train.device`` exists on this machine, the datasets of ``dataloader.train`` (if
    ``train``) and ``dataloader.test`` are registered and have ``model.num_classes`` classes
    (where their metadata lists them), the batch divides among the processes, the periods are
    positive.

    Raises:
        ConfigError: naming the key and the problem.
    """
    check_device(cfg.train.device, "train.device", "add train.device=cpu")
    names = []
    if train:
        batch = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
        if isinstance(batch, int):
            check_batch_divisible(batch, "dataloader.train.total_batch_size")
        for key in ("max_iter", "checkpointer.period"):
            value = OmegaConf.select(cfg.train, key, default=1)
            if value <= 0:
                raise ConfigError(f"train.{key} must be positive, got {value}")
        train_names = _dataset_names(cfg.dataloader.train)
        check_datasets_registered(train_names, "dataloader.train.dataset.names")
        check_dataset_images(
            train_names,
            "dataloader.train.dataset.names",
            skip_key="dataloader.train.mapper.skip_unreadable",
            skip=bool(
                OmegaConf.select(cfg, "dataloader.train.mapper.skip_unreadable", default=False)
            ),
        )
        names += train_names
    if "test" in cfg.dataloader:
        test_names = _dataset_names(cfg.dataloader.test)
        check_datasets_registered(test_names, "dataloader.test.dataset.names")
        check_dataset_images(test_names, "dataloader.test.dataset.names")
        names += test_names
    _check_classes(cfg, names)


def _check_classes(cfg: DictConfig, names: List[str]) -> List[str]:
    num_classes = OmegaConf.select(cfg, "model.num_classes", default=None)
    if not isinstance(num_classes, int):
        return []
    return check_dataset_classes(
        num_classes, names, key="model.num_classes", fix="add model.num_classes={}"
    )


def setup(args) -> DictConfig:
    """The config of ``args.config_file`` with the ``key=value`` overrides of ``args.opts``,
    then detectron2's ``default_setup`` (logging, ``config.yaml`` in ``train.output_dir``,
    seed ``train.seed``)."""
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(
        cfg.train.output_dir,
        distributed_rank=comm.get_rank(),
        name="atss_d2",
        abbrev_name="atss_d2",
    )
    return cfg


def _build_model(cfg: DictConfig) -> nn.Module:
    try:
        model = instantiate(cfg.model)
    except ValueError as e:  # the constructors' checks name the argument (and its YAML key)
        raise ConfigError(f"model: {e}") from e
    model.to(torch.device(cfg.train.device))
    return model


def do_test(cfg: DictConfig, model: nn.Module) -> Dict[str, Any]:
    """
    Inference on ``dataloader.test`` evaluated by ``dataloader.evaluator`` (results printed in
    detectron2's ``copypaste:`` format).

    Returns:
        task -> metric -> value, as ``inference_on_dataset``; empty without an evaluator.
    """
    if "evaluator" not in cfg.dataloader or "test" not in cfg.dataloader:
        return {}
    loader = instantiate(cfg.dataloader.test)
    _warn_unchecked(cfg, _dataset_names(cfg.dataloader.test))
    results = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def _warn_unchecked(cfg: DictConfig, names: List[str]) -> None:
    """NUM_CLASSES against datasets loaded since :func:`check_lazy_config` (COCO json
    datasets get their classes when loaded)."""
    unchecked = _check_classes(cfg, names)
    if unchecked:
        logger.warning(
            f"Datasets {unchecked} declare no thing_classes; only the category ids of their "
            "annotations are checked (against model.num_classes)"
        )


def evaluate(cfg: DictConfig, resume: bool = False) -> Dict[str, Any]:
    """
    ``--eval-only``: build the model, load ``train.init_checkpoint`` (or, with ``resume``, the
    last checkpoint of ``train.output_dir``) safely and evaluate it (:func:`do_test`). Warns
    when the detection head is untrained.
    """
    check_lazy_config(cfg, train=False)
    model = _build_model(cfg)
    model.eval()
    checkpointer = SafeAtomicCheckpointer(model, cfg.train.output_dir)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    report = checkpointer.last_load_report
    weights = report.path if report else cfg.train.init_checkpoint
    test_names = _dataset_names(cfg.dataloader.test) if "test" in cfg.dataloader else []
    check_weights_for_inference(weights, report, test_names, key="model.num_classes")
    return do_test(cfg, model)


def _ddp(model: nn.Module, cfg: DictConfig) -> nn.Module:
    kwargs = dict(OmegaConf.to_container(cfg.train.get("ddp", {}), resolve=True))
    if torch.device(cfg.train.device).type == "cpu":
        kwargs["device_ids"] = None  # detectron2 would pass the local rank, which CPU DDP refuses
    return create_ddp_model(model, **kwargs)


def build_trainer(cfg: DictConfig, model: Optional[nn.Module] = None):
    """
    The trainer of ``cfg`` with its hooks registered: ``SimpleTrainer`` (with
    ``train.amp.enabled``, :func:`~atss_d2.engine.amp.amp_trainer_class`'s) over the model
    (built from ``cfg.model`` if not given), the optimizer and ``dataloader.train``. It has
    ``checkpointer`` (a :class:`SafeAtomicCheckpointer` of the model, optimizer and trainer in
    ``train.output_dir``), and ``last_eval_results``, the results of the latest evaluation
    (None before one).
    """
    if model is None:
        model = _build_model(cfg)
        logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    _warn_unchecked(cfg, _dataset_names(cfg.dataloader.train))

    model = _ddp(model, cfg)
    amp = OmegaConf.select(cfg, "train.amp.enabled", default=False)
    trainer_class = amp_trainer_class(cfg.train.device) if amp else SimpleTrainer
    trainer = trainer_class(model, train_loader, optimizer)
    trainer.checkpointer = SafeAtomicCheckpointer(
        model, cfg.train.output_dir, optimizer=optimizer, trainer=trainer
    )
    trainer.checkpointer.keep_class_names(_dataset_names(cfg.dataloader.train))
    trainer.last_eval_results = None

    def test_and_keep():
        trainer.last_eval_results = do_test(cfg, model)
        return trainer.last_eval_results

    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(trainer.checkpointer, **cfg.train.checkpointer)
                if main
                else None
            ),
            hooks.EvalHook(cfg.train.get("eval_period", 0), test_and_keep),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.get("log_period", 20),
                )
                if main
                else None
            ),
            # Last: the other hooks of the iteration have run when a stop saves its checkpoint.
            StopOnSignal(),
        ]
    )
    return trainer


def do_train(cfg: DictConfig, resume: bool = False) -> Optional[Dict[str, Any]]:
    """
    Train ``cfg`` for ``train.max_iter`` iterations from ``train.init_checkpoint`` or, with
    ``resume``, from the last checkpoint of ``train.output_dir`` (continuing at its iteration),
    evaluating every ``train.eval_period`` iterations and at the end; ``model_final.pth`` is
    written at the end.

    Returns:
        the results of the last evaluation (None without one).
    """
    check_lazy_config(cfg, train=True)
    trainer = build_trainer(cfg)
    checkpointer = trainer.checkpointer
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # The checkpoint holds the iteration that had finished: continue at the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer.last_eval_results


def main(args) -> Optional[Dict[str, Any]]:
    """train_net.py's ``main`` for a ``.py`` config: train, or evaluate with ``--eval-only``
    (``--resume``: from the last checkpoint of ``train.output_dir``)."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    return do_train(cfg, resume=args.resume)
