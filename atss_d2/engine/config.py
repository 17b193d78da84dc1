"""
Loading and checking a training config, with errors that name the key and the file.

yacs already refuses unknown keys and values of the wrong type while merging, but its messages
name neither the file (with ``_BASE_`` chains, several files are merged at once) nor a likely
correct key. :func:`merge_config_file` and :func:`merge_config_opts` re-raise them as
:class:`ConfigError` saying which file or command-line option sets the key, with close matches.
:func:`validate_config` checks what yacs cannot: that the datasets exist and that
``MODEL.ATSS.NUM_CLASSES`` matches their ``thing_classes``.
"""

import difflib
import logging
import os
import re
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..config_checks import ConfigError, check_atss_config

__all__ = [
    "ConfigError",
    "check_atss_config",
    "check_dataset_classes",
    "check_dataset_images",
    "check_datasets_registered",
    "check_expected_results",
    "check_num_classes",
    "check_solver_batch",
    "merge_config_file",
    "merge_config_opts",
    "validate_config",
    "warn_unused_retinanet_keys",
]

logger = logging.getLogger(__name__)

_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((.*) vs\. (.*)\) with values \((.*) vs\. (.*)\) for config key: (\S+)",
    re.S,
)


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = prefix + k
        keys.extend(_all_keys(v, full + ".") if isinstance(v, CfgNode) else [full])
    return keys


def _suggest(cfg: CfgNode, key: str) -> str:
    """ "; did you mean ...?" with the closest existing keys: a sibling first (a misspelt last
    component), else any key (a misspelt parent)."""
    keys = _all_keys(cfg)
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    close = [f"{parent}.{s}" if parent else s for s in difflib.get_close_matches(leaf, siblings, 2)]
    if not close:
        close = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _lookup(tree: Any, key: str) -> Tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _config_chain(path: str) -> List[Tuple[str, dict]]:
    """(file, parsed yaml) of ``path`` and its ``_BASE_`` files, the deepest base first."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return [(path, {})]
    if not isinstance(data, dict):
        return [(path, {})]
    chain = []
    base = data.get("_BASE_")
    if isinstance(base, str):
        base = os.path.expanduser(base)
        if not (os.path.isabs(base) or "://" in base):
            base = os.path.join(os.path.dirname(path), base)
        chain.extend(_config_chain(base))
    chain.append((path, data))
    return chain


def _file_setting(path: str, key: str) -> str:
    """The file of ``path``'s ``_BASE_`` chain whose value of ``key`` is the one merged."""
    for file, data in reversed(_config_chain(path)):
        if _lookup(data, key)[0]:
            return file
    return path


def _explain(cfg: CfgNode, error: Exception, where) -> Optional[str]:
    """A clear message for a yacs merge error, or None if it is not one we recognise.
    ``where(key)`` names the place that sets ``key``."""
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    m = _UNKNOWN_KEY.search(text)
    if m:
        key = m.group(1)
        return f"{where(key)}: unknown config key {key}{_suggest(cfg, key)}"
    m = _TYPE_MISMATCH.search(text)
    if m:
        expected, got, default, value, key = m.groups()
        return (
            f"{where(key)}: config key {key} has the wrong type: expected {expected} "
            f"(default {default}), got {got} ({value})"
        )
    if "renamed" in text or "deprecated" in text:
        return f"{where('')}: {text}"
    return None


def merge_config_file(cfg: CfgNode, path: str) -> CfgNode:
    """
    ``cfg.merge_from_file(path)`` (``_BASE_`` chains included), raising :class:`ConfigError`
    that names the file and the key for a missing or unparsable file, an unknown key or a
    value of the wrong type.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    try:
        cfg.merge_from_file(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} (or one of its _BASE_ files) is not valid YAML: {e}") from e
    except OSError as e:  # a missing _BASE_ file
        raise ConfigError(f"{path}: cannot read a config file it includes: {e}") from e
    except (KeyError, ValueError, AssertionError) as e:
        message = _explain(cfg, e, lambda key: _file_setting(path, key) if key else path)
        if message is None:
            raise ConfigError(f"{path}: {e}") from e
        raise ConfigError(message) from e
    return cfg


def merge_config_opts(cfg: CfgNode, opts: List[str]) -> CfgNode:
    """``cfg.merge_from_list(opts)`` (``KEY VALUE`` pairs from the command line), raising
    :class:`ConfigError` that names the option for an unknown key or a wrong type."""
    if len(opts) % 2:
        raise ConfigError(
            f"Command-line config options must be KEY VALUE pairs; got an odd number: {opts}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        message = _explain(cfg, e, lambda key: "command-line options")
        if message is None:
            raise ConfigError(f"command-line options {opts}: {e}") from e
        raise ConfigError(message) from e
    return cfg


def check_datasets_registered(names: Iterable[str], key: str) -> None:
    """Raise ConfigError, naming ``key``, the close names and how to register one, for the first
    of ``names`` not registered in detectron2's DatasetCatalog, or whose files are not on disk."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"{key} names dataset {name!r}, which is not registered.{hint} {_REGISTER_HINT}"
            )
        _check_dataset_files(name, key)


_REGISTER_HINT = (
    "Register your own data with train_net.py --coco-dataset NAME JSON IMAGE_DIR or "
    "--voc-dataset NAME ANNOTATIONS_DIR IMAGES_DIR (atss_d2.data.register_coco_dataset / "
    "register_voc_dataset)."
)


def _missing_files(name: str) -> List[str]:
    """The local files and folders a dataset's metadata names that do not exist (those of
    detectron2's built-in COCO, VOC and LVIS splits that were not downloaded)."""
    meta = MetadataCatalog.get(name)
    paths = [meta.get(k) for k in ("json_file", "image_root", "dirname")]
    return [p for p in paths if isinstance(p, str) and "://" not in p and not os.path.exists(p)]


def _check_dataset_files(name: str, key: str) -> None:
    """A registered dataset whose files are not on disk (detectron2's built-in COCO, VOC and
    LVIS splits, registered whether or not they were downloaded) stops here, naming the path."""
    missing = _missing_files(name)
    if missing:
        raise ConfigError(
            f"{key} names dataset {name!r}, whose files are not on disk: {missing[0]} does not "
            "exist. detectron2's built-in datasets are looked up under $DETECTRON2_DATASETS "
            f"(default ./datasets, now {os.environ.get('DETECTRON2_DATASETS', 'datasets')!r}). "
            + _REGISTER_HINT
        )


def check_dataset_images(
    names: Iterable[str], key: str, *, skip_key: Optional[str] = None, skip: bool = False
) -> None:
    """
    Raise :class:`ConfigError` for the first of ``names`` (set by ``key``) whose registration
    found image files missing or unreadable (``register_coco_dataset`` and
    ``register_voc_dataset`` keep their warnings in the metadata as ``missing_images`` and
    ``unreadable_images``). Training passes the key that skips unreadable images (``skip_key``,
    e.g. ``DATALOADER.SKIP_UNREADABLE_IMAGES``) and its value (``skip``): set, the missing
    files are skipped and not an error. Evaluation passes neither: it needs every image.
    """
    if skip:
        return
    if skip_key:
        fix = f"or set {skip_key} True to train without them"
    else:
        fix = "evaluation needs every image"
    for name in names:
        meta = MetadataCatalog.get(name)
        message = meta.get("missing_images")
        if message:
            raise ConfigError(
                f"{key} names dataset {name!r}: {message}. Put the files there or give the "
                f"right IMAGE_DIR; {fix}"
            )
        message = meta.get("unreadable_images")
        if message:
            raise ConfigError(
                f"{key} names dataset {name!r}: {message}. Replace or remove them; {fix}"
            )


def check_num_classes(cfg: CfgNode, dataset_names: Iterable[str]) -> List[str]:
    """
    Raise :class:`ConfigError` if ``MODEL.ATSS.NUM_CLASSES`` differs from the number of
    ``thing_classes`` in the metadata of one of ``dataset_names``.

    Returns:
        the names whose metadata has no ``thing_classes`` yet (COCO json datasets get them
        when first loaded), which could not be checked.
    """
    return check_dataset_classes(cfg.MODEL.ATSS.NUM_CLASSES, dataset_names)


def check_dataset_classes(
    num_classes: int,
    dataset_names: Iterable[str],
    key: str = "MODEL.ATSS.NUM_CLASSES",
    fix: str = "set MODEL.ATSS.NUM_CLASSES {}",
) -> List[str]:
    """:func:`check_num_classes` for a number of classes set by ``key`` (named in the error,
    with ``fix`` formatted with the datasets' count), e.g. a LazyConfig's ``model.num_classes``.
    Datasets that list the same class names must list them in the same order: class id ``i``
    of one is class id ``i`` of the other (training on one, evaluating on another, or training
    on both); other names are a warning."""
    unchecked, first = [], None
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            unchecked.append(name)
            continue
        if len(classes) != num_classes:
            hint = ""
            if MetadataCatalog.get(name).get("annotations_dir"):
                # A VOC folder's classes are the names its XMLs use: a val folder can lack one.
                hint = (
                    ", or, for the classes of a model trained on other folders, register those "
                    "too (the same --voc-dataset folders as for training) or give --classes"
                )
            raise ConfigError(
                f"{key} is {num_classes}, but dataset {name!r} has {len(classes)} classes "
                f"({_shown(classes)}); {fix.format(len(classes))}{hint}"
            )
        if first is None:
            first = (name, list(classes))
        elif list(classes) != first[1]:
            pair = (
                f"datasets {first[0]!r} and {name!r} name their classes differently "
                f"({_shown(first[1])} / {_shown(classes)})"
            )
            if sorted(map(str, classes)) != sorted(map(str, first[1])):
                # Other names (renamed classes?): class i is the i-th name of each.
                logger.warning(f"{pair}: class i is taken to be the same class in both")
                continue
            raise ConfigError(
                f"{pair}: the same classes in another order, so class ids would mean other "
                "classes in each. Register them with the same class list (VOC: the same "
                "--voc-dataset folders or --classes for all; COCO: the same 'categories' in "
                "every json)"
            )
    return unchecked


def _shown(classes: Sequence, most: int = 8) -> str:
    return ", ".join(map(str, classes[:most])) + (", ..." if len(classes) > most else "")


def check_device(device: str, key: str, fix: str) -> None:
    """:class:`ConfigError` if ``device`` (set by ``key``) is CUDA on a machine without it;
    ``fix`` says what to set instead."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {device!r}, but this machine has no CUDA device; {fix}")


def check_batch_divisible(batch: int, key: str, world_size: Optional[int] = None) -> None:
    """:class:`ConfigError` if the total batch ``batch`` (set by ``key``) does not divide among
    the processes of this run (``world_size``, default: the current process group's)."""
    world_size = comm.get_world_size() if world_size is None else world_size
    if batch % world_size:
        raise ConfigError(
            f"{key} {batch} is not divisible by the {world_size} processes "
            "(--num-gpus x --num-machines)"
        )


def check_solver_batch(cfg: CfgNode, world_size: Optional[int] = None) -> None:
    """
    ``SOLVER.IMS_PER_BATCH`` must divide among the ``world_size`` processes (default: the
    current process group's), after the rescaling that detectron2's
    ``DefaultTrainer.auto_scale_workers`` does when ``SOLVER.REFERENCE_WORLD_SIZE`` is set:
    the batch is then meant for that many processes, and scaled to ``world_size`` (e.g. 16 for
    8 processes is 6 on 3), which divides whenever it divides the reference.

    Raises:
        ConfigError: naming the keys and the numbers.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    batch, reference = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference and reference != world_size:
        if reference < 0 or batch % reference:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH {batch} is not divisible by SOLVER.REFERENCE_WORLD_SIZE "
                f"{reference}, the number of processes it is the total batch of"
            )
        return
    check_batch_divisible(batch, "SOLVER.IMS_PER_BATCH", world_size)


def warn_unused_retinanet_keys(cfg: CfgNode) -> List[str]:
    """
    Warn about ``MODEL.RETINANET`` values other than detectron2's defaults in a config of the
    ATSS meta-architecture, which reads none of them (its keys are under ``MODEL.ATSS``, most
    of the same name). Returns the keys warned about.
    """
    from detectron2.config import get_cfg

    if cfg.MODEL.META_ARCHITECTURE != "ATSS" or "RETINANET" not in cfg.MODEL:
        return []
    defaults = get_cfg().MODEL.RETINANET
    changed = [k for k, v in cfg.MODEL.RETINANET.items() if k in defaults and v != defaults[k]]
    for key in changed:
        instead = (
            f"set MODEL.ATSS.{key} instead"
            if key in cfg.MODEL.get("ATSS", {})
            else "ATSS has no such setting"
        )
        logger.warning(
            f"MODEL.RETINANET.{key} is {cfg.MODEL.RETINANET[key]!r}, but the ATSS model does not "
            f"read MODEL.RETINANET: {instead}"
        )
    return changed


def check_expected_results(cfg: CfgNode) -> None:
    """
    ``TEST.EXPECTED_RESULTS``, which detectron2's ``verify_results`` checks at the end of
    training or evaluation, must be a list of ``[task, metric, expected, tolerance]`` (e.g.
    ``[["bbox", "AP", 38.5, 0.2]]``) and, as detectron2 reads task -> metric of a single
    dataset's results, ``DATASETS.TEST`` must name one dataset: refused here rather than after
    the run.

    Raises:
        ConfigError: naming the entry at fault.
    """
    expected = cfg.TEST.EXPECTED_RESULTS
    if not expected:
        return
    for entry in expected:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 4
        if ok:
            task, metric, value, tolerance = entry
            ok = isinstance(task, str) and isinstance(metric, str)
            ok = ok and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in (value, tolerance)
            )
        if not ok:
            raise ConfigError(
                f"TEST.EXPECTED_RESULTS entry {entry!r} is not [task, metric, expected, "
                'tolerance], e.g. ["bbox", "AP", 38.5, 0.2]'
            )
    if len(cfg.DATASETS.TEST) != 1:
        raise ConfigError(
            "TEST.EXPECTED_RESULTS is checked against the results of one test dataset, but "
            f"DATASETS.TEST names {len(cfg.DATASETS.TEST)} ({list(cfg.DATASETS.TEST)})"
        )


def validate_config(cfg: CfgNode, *, train: bool = True) -> None:
    """
    Check, before anything is built, what would otherwise fail late or silently: the datasets
    of ``DATASETS.TRAIN`` (if ``train``) and ``DATASETS.TEST`` are registered with their image
    files on disk (:func:`check_dataset_images`), their classes match
    ``MODEL.ATSS.NUM_CLASSES`` and each other (where the metadata already lists them; the
    trainer checks the rest once the datasets are loaded; without ``train``, the registered
    ``DATASETS.TRAIN`` datasets of ``NUM_CLASSES`` classes take part in the comparison), and
    the solver's periods are positive.

    Raises:
        ConfigError: naming the key and the problem.
    """
    check_atss_config(cfg)
    warn_unused_retinanet_keys(cfg)
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE", "set MODEL.DEVICE cpu")
    if train:
        check_solver_batch(cfg)
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN is empty; name at least one training dataset")
        check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_dataset_images(
            cfg.DATASETS.TRAIN,
            "DATASETS.TRAIN",
            skip_key="DATALOADER.SKIP_UNREADABLE_IMAGES",
            skip=cfg.DATALOADER.SKIP_UNREADABLE_IMAGES,
        )
        for key in ("MAX_ITER", "CHECKPOINT_PERIOD", "IMS_PER_BATCH"):
            if cfg.SOLVER[key] <= 0:
                raise ConfigError(f"SOLVER.{key} must be positive, got {cfg.SOLVER[key]}")
    check_datasets_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
    check_dataset_images(cfg.DATASETS.TEST, "DATASETS.TEST")
    check_expected_results(cfg)
    if train:
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    else:
        # Registered training datasets on disk, of the model's class count, name its class ids;
        # others (e.g. a config's built-in COCO split, left in place and never downloaded) say
        # nothing about the model.
        registered = DatasetCatalog.list()
        names = [
            n
            for n in cfg.DATASETS.TRAIN
            if n in registered
            and not _missing_files(n)
            and len(MetadataCatalog.get(n).get("thing_classes", [])) == cfg.MODEL.ATSS.NUM_CLASSES
        ] + list(cfg.DATASETS.TEST)
    unchecked = check_num_classes(cfg, names)
    if unchecked:
        logger.info(f"Classes of {unchecked} will be checked once the datasets are loaded")
