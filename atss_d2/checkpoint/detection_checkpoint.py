"""A ``DetectionCheckpointer`` that never unpickles arbitrary objects and says what it loaded."""

import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .convert import (
    convention_overrides,
    describe_convention,
    foreign_layout,
    input_convention,
    without_module_prefix,
)
from .safe_load import CheckpointReadError, load_checkpoint_file

__all__ = [
    "IncompatibleWeightsError",
    "LoadReport",
    "SafeDetectionCheckpointer",
    "WeightsNotFoundError",
    "model_input_convention",
    "read_last_checkpoint_tag",
]

logger = logging.getLogger(__name__)

# Parameter-name prefixes of an ATSS model, and how the load report names them.
_PARTS = (
    ("backbone.bottom_up.", "backbone (ResNet)"),
    ("backbone.", "FPN"),
    ("head.", "detection head"),
)
# Buffers rebuilt from the config, never expected in a checkpoint.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
_NORM_STATS = ("running_mean", "running_var")


class WeightsNotFoundError(FileNotFoundError):
    """A weights file (``MODEL.WEIGHTS``, ``--resume``) that does not exist or cannot be fetched."""


class IncompatibleWeightsError(ValueError):
    """Weights whose detection head does not fit the model of the config (e.g. another number
    of classes): fine to fine-tune from, meaningless to run inference with."""


@dataclass
class LoadReport:
    """
    What one :meth:`SafeDetectionCheckpointer.load` did to the model.

    Attributes:
        path: the file (or URL) as given.
        parts: for each part of the model ("backbone (ResNet)", "FPN", "detection head", ...),
            (tensors loaded from the file, tensors in the model).
        reinitialised: (name, shape in the file, shape in the model) of tensors whose shape
            differs, left at the model's initialisation.
        num_classes: the model's number of classes (its head's ``num_classes``), if it has one.
        num_anchors: the model's anchors per location (outputs of its head's ``bbox_pred`` / 4),
            if it has a head; else derived from ``num_classes`` and the classification layer.
        default_norm_stats: BatchNorm ``running_mean`` / ``running_var`` tensors the file lacks
            while it has the layer's weight (Detectron / Caffe2 ImageNet models fold them into
            scale and bias): not counted as loaded in ``parts``; they hold 0 and 1.
        unmatched: names of tensors given to the model that it has none of (after the
            ``module.`` prefix of DistributedDataParallel is removed and name matching).
        thing_classes: the class names the checkpoint was trained on, when it holds them
            (atss_d2's trainer saves those of its first training dataset,
            ``tools/convert_checkpoint.py`` those of an mmdetection meta); else None.
        input_convention: the input the weights were trained on (``{"INPUT.FORMAT": ...,
            "MODEL.PIXEL_MEAN": ..., "MODEL.PIXEL_STD": ..., "MODEL.RESNETS.STRIDE_IN_1X1":
            ...}``, some keys only), when the file says: recorded by
            ``tools/convert_checkpoint.py``, implied by detectron2's torchvision ``.pkl``
            (``__author__`` "torchvision": RGB, ImageNet mean and std, stride in the 3x3 conv)
            and Detectron / Caffe2 files (BGR); else None.
        input_overrides: ``KEY VALUE`` config overrides that make the model read its input as
            ``input_convention`` says; empty when it already does.

    A model tensor counts as loaded when the state dict given to the model has it, under its
    name and with its shape.
    """

    path: str
    parts: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    reinitialised: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    num_classes: Optional[int] = None
    num_anchors: Optional[int] = None
    default_norm_stats: int = 0
    unmatched: List[str] = field(default_factory=list)
    thing_classes: Optional[List[str]] = None
    input_convention: Optional[Dict[str, object]] = None
    input_overrides: List[str] = field(default_factory=list)

    def _cls_and_anchors(self) -> Optional[Tuple[int, int, int]]:
        """(outputs of the file's classification layer, its anchors per location, the model's
        anchors per location) when ``head.cls_score`` was re-initialised, else None."""
        shapes = {name: (in_file, in_model) for name, in_file, in_model in self.reinitialised}
        if "head.cls_score.weight" not in shapes or not self.num_classes:
            return None
        in_file, in_model = shapes["head.cls_score.weight"]
        model_anchors = self.num_anchors or max(in_model[0] // self.num_classes, 1)
        file_anchors = model_anchors
        if "head.bbox_pred.weight" in shapes:
            file_anchors = max(shapes["head.bbox_pred.weight"][0][0] // 4, 1)
        return in_file[0], file_anchors, model_anchors

    def checkpoint_num_classes(self) -> Optional[int]:
        """The number of classes of the file's classification layer when it differs from the
        model's (``head.cls_score`` re-initialised), else None. The layer has (anchors per
        location x classes) outputs; the anchors per location are the model's, or the file's
        when its box regression layer differs too."""
        found = self._cls_and_anchors()
        if found is None:
            return None
        outputs, file_anchors, _ = found
        if outputs % file_anchors:
            return None
        classes = outputs // file_anchors
        return None if classes == self.num_classes else classes

    def checkpoint_head_layout(self) -> Optional[str]:
        """When the file's head predicts another number of anchors per location than the
        model's (its ``head.bbox_pred`` has another number of outputs, e.g. a RetinaNet head,
        9 anchors per location, in an ATSS model, 1), how its classification layer decomposes,
        e.g. "720 outputs = 9 anchors x 80 classes: a RetinaNet-style head"; else None."""
        found = self._cls_and_anchors()
        if found is None or found[1] == found[2]:
            return None
        outputs, file_anchors, model_anchors = found
        if outputs % file_anchors:
            return f"{outputs} outputs for {file_anchors} anchors per location"
        layout = f"{outputs} outputs = {file_anchors} anchors x {outputs // file_anchors} classes"
        if file_anchors > 1 and model_anchors == 1:
            layout += ": a RetinaNet-style head"
        return layout

    def loaded_nothing(self) -> bool:
        """Whether no tensor of the model came from the file."""
        return not any(loaded for loaded, _ in self.parts.values())

    def from_scratch(self) -> List[str]:
        """Parts of the model of which no tensor came from the file."""
        return [name for name, (loaded, total) in self.parts.items() if total and not loaded]

    @property
    def head_loaded(self) -> bool:
        """Whether the detection head came from the file (all of it, or all but a
        re-initialised classification layer)."""
        loaded, total = self.parts.get("detection head", (0, 0))
        return total > 0 and loaded > 0


def _part_of(name: str) -> str:
    for prefix, part in _PARTS:
        if name.startswith(prefix):
            return part
    return name.split(".")[0]


def _converted_name(filename: str, source: str) -> str:
    stem = os.path.splitext(os.path.basename(filename))[0]
    if source == "torchvision":
        return os.path.join("pretrained", f"{stem}-d2.pkl")
    return os.path.join("output", "converted", f"{stem}-d2.pth")


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` whose file reading refuses anything but data.

    detectron2 reads ``.pkl`` files (its model zoo, Detectron / Caffe2 models) with plain
    ``pickle.load``, which runs whatever callables the file names. Here ``.pkl`` files go through
    a restricted unpickler (numpy arrays, dtypes, scalars, builtin containers) and every other
    file through ``torch.load(weights_only=True)``; a file that needs more raises
    :class:`~atss_d2.checkpoint.UnsafeCheckpointError` naming it, before anything from it runs.
    The formats understood are detectron2's: model-zoo ``.pkl`` (``{"model", "__author__"}``),
    Detectron / Caffe2 ``.pkl`` (``{"blobs"}`` or a flat dict, loaded with name matching),
    pycls ``.pyth`` and torch ``.pth`` files.

    URLs (``detectron2://...``, ``https://...``) are fetched through detectron2's
    ``PathManager`` (downloaded once into its cache) and then read the same way. A missing
    file, a directory, a failed download or an unreadable file (an HTML page, a truncated
    file) raises :class:`WeightsNotFoundError` or :class:`CheckpointReadError` naming it. So
    does an unconverted torchvision ResNet, ATSS authors' or mmdetection checkpoint, whose
    names detectron2 cannot match: the error gives the ``tools/convert_checkpoint.py`` command
    that converts it.

    After each load, :attr:`last_load_report` (a :class:`LoadReport`) says which parts of the
    model came from the file; the parts that start from scratch and any re-initialised layer
    (e.g. the classification layer of a checkpoint with another number of classes) are logged.
    """

    last_load_report = None
    _given_path = ""  # the path as given to load()
    _loaded_file = ""  # the local file read

    def load(self, path, *args, **kwargs):
        self.last_load_report = None
        self._given_path = path
        self._loaded_file = path
        if path:
            path = self._local_path(path)
        return super().load(path, *args, **kwargs)

    def _local_path(self, path: str) -> str:
        if os.path.isfile(path) and os.path.basename(path) == "last_checkpoint":
            raise WeightsNotFoundError(_tag_message(path))
        if os.path.isfile(path):
            return path
        if os.path.isdir(path):
            raise WeightsNotFoundError(_directory_message(path))
        if "://" not in path:
            raise WeightsNotFoundError(
                f"Weights file not found: {path!r} (MODEL.WEIGHTS or the file --resume "
                f"named; relative paths are relative to {os.getcwd()}). docs/MODEL_ZOO.md says "
                "how to get the ImageNet backbones and converted checkpoints the configs name."
            )
        try:
            local = self.path_manager.get_local_path(path)
        except Exception as e:  # network, HTTP or handler errors: all mean "cannot fetch"
            raise WeightsNotFoundError(
                f"Cannot fetch weights {path!r}: {type(e).__name__}: {e}. Without network "
                "access, download the file on another machine, copy it here and set "
                "MODEL.WEIGHTS to its local path."
            ) from e
        if not os.path.isfile(local):
            raise WeightsNotFoundError(f"Weights {path!r} resolved to {local!r}, which is no file")
        return local

    def _load_file(self, filename: str):
        data = load_checkpoint_file(filename)  # data only; unreadable files are named
        if not isinstance(data, dict):
            raise CheckpointReadError(
                f"{filename!r} holds a {type(data).__name__}, not a checkpoint's dict"
            )
        checkpoint = self._detectron2_layout(filename, data)
        self._check_layout(filename, data, checkpoint["model"])
        self._loaded_file = filename
        return checkpoint

    def _detectron2_layout(self, filename: str, data: dict) -> dict:
        """``data`` as detectron2 understands it: ``{"model": state dict, ...}``."""
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                # detectron2 model-zoo format (also what tools/convert_checkpoint.py writes).
                logger.info("Reading a file from '%s'", data["__author__"])
                return data
            # Detectron / Caffe2 model zoo: ImageNet models are a flat dict of blobs.
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            if "model_state" not in data:
                raise CheckpointReadError(
                    f"Cannot load .pyth file {filename!r}: no 'model_state' (pycls)"
                )
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        return data

    def _check_layout(self, filename: str, data: dict, weights) -> None:
        """
        Refuse, naming ``filename``, the checkpoints of other projects (torchvision, the ATSS
        authors' code, mmdetection), whose names detectron2 cannot match, with the command that
        converts them.
        """
        if not isinstance(weights, Mapping):
            raise CheckpointReadError(
                f"{filename!r}: its 'model' entry is a {type(weights).__name__}, not a state "
                "dict of tensors"
            )
        names = list(weights)
        inner = data.get("state_dict") if "model" not in data else None
        if isinstance(inner, Mapping):  # mmdetection's {"state_dict": ..., "meta": ...}
            names = list(inner)
        known = set(without_module_prefix(names)) & set(self.model.state_dict())
        found = foreign_layout(names)
        if found is not None and len(found[2]) <= len(known):
            found = None  # mostly this model's names: a few extra tensors
        if found is None and not known and isinstance(inner, Mapping) and "meta" in data:
            found = ("mmdet", "mmdetection", ["state_dict", "meta"])
        if found is not None:
            source, description, examples = found[0], found[1], found[2][:2]
            out = _converted_name(filename, source)
            command = shlex.join(
                ["python", "tools/convert_checkpoint.py", "--source", source, filename, out]
            )
            raise CheckpointReadError(
                f"{filename!r} is an unconverted {description} checkpoint (keys like "
                f"{', '.join(examples)}), whose names this model does not have: convert it with "
                f"`{command}` and set MODEL.WEIGHTS to {out} (docs/MODEL_ZOO.md)"
            )

    def _check_tensors(self, checkpoint) -> None:
        """Refuse, naming the file, weights that are no state dict of tensors."""
        weights = checkpoint["model"]
        bad = [k for k, v in weights.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        if bad:
            keys = sorted(map(str, checkpoint))[:8]
            kind = type(weights[bad[0]]).__name__
            raise CheckpointReadError(
                f"{self._loaded_file!r} is not a detectron2 checkpoint: its weights hold {kind} "
                f"{bad[0]!r}, not a tensor (top-level keys {keys}); detectron2 reads "
                "{'model': {name: tensor}} or a bare state dict, and tools/convert_checkpoint.py "
                "converts mmdetection, ATSS authors' and torchvision files"
            )

    def _load_model(self, checkpoint):
        self._check_tensors(checkpoint)
        heuristics = checkpoint.get("matching_heuristics", False)
        if heuristics:
            # detectron2's name matching (Caffe2 / model-zoo ImageNet files), done here so that
            # the report sees the names the model is given.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False
        weights = checkpoint["model"] = _align_tower_convs(checkpoint["model"], self.model)
        given = dict(
            zip(
                without_module_prefix(weights),
                (tuple(v.shape) for v in weights.values()),
            )
        )
        incompatible = super()._load_model(checkpoint)
        if heuristics:
            checkpoint["matching_heuristics"] = heuristics
        self.last_load_report = self._report(incompatible, given)
        names = checkpoint.get("thing_classes")
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            self.last_load_report.thing_classes = list(names)
        convention = _file_convention(checkpoint)
        if convention:
            self.last_load_report.input_convention = convention
            self.last_load_report.input_overrides = convention_overrides(
                convention, lambda key: _model_setting(self.model, key)
            )
        self._log_report(self.last_load_report)
        return incompatible

    def _report(self, incompatible, given: Dict[str, tuple]) -> LoadReport:
        """What the model got from ``given`` (name -> shape of the tensors it was given)."""
        report = LoadReport(self._given_path)
        report.parts = {part: (0, 0) for _, part in _PARTS}  # in this order in the log
        for name, value in self.model.state_dict().items():
            if name.rsplit(".", 1)[-1] in _CONFIG_BUFFERS or name.endswith("num_batches_tracked"):
                continue
            part = _part_of(name)
            loaded, total = report.parts.get(part, (0, 0))
            found = given.get(name) == tuple(value.shape)
            report.parts[part] = (loaded + found, total + 1)
            prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            if leaf in _NORM_STATS and name not in given and f"{prefix}.weight" in given:
                report.default_norm_stats += 1
        report.parts = {part: counts for part, counts in report.parts.items() if counts[1]}
        report.reinitialised = list(incompatible.incorrect_shapes)
        report.unmatched = list(incompatible.unexpected_keys)
        head = getattr(self.model, "head", None)
        report.num_classes = getattr(head, "num_classes", None)
        bbox_pred = getattr(head, "bbox_pred", None)
        if isinstance(getattr(bbox_pred, "weight", None), torch.Tensor):
            report.num_anchors = max(bbox_pred.weight.shape[0] // 4, 1)
        return report

    def _log_report(self, report: LoadReport) -> None:
        summary = ", ".join(f"{p} {n}/{t}" for p, (n, t) in report.parts.items())
        logger.info(f"Tensors loaded from {report.path}: {summary}")
        if report.default_norm_stats:
            logger.info(
                f"{report.default_norm_stats} BatchNorm running means / variances are not in "
                f"{report.path} (as in Detectron / Caffe2 ImageNet models, whose normalisation "
                "is in scale and bias): they are 0 and 1"
            )
        if report.loaded_nothing():
            names = (
                f" (its names: {', '.join(report.unmatched[:3])}, ...)" if report.unmatched else ""
            )
            logger.warning(
                f"Nothing was loaded from {report.path}: none of its tensors has the name and "
                f"shape of one of this model{names}; the whole model stays at its "
                "initialisation. Is it a checkpoint of another model?"
            )
        scratch = report.from_scratch()
        if scratch and not report.loaded_nothing():
            backbone_only = set(scratch) <= {"FPN", "detection head"}
            logger.info(
                f"Not in {report.path}, starting from scratch: {', '.join(scratch)}"
                + (" (normal for an ImageNet backbone file)" if backbone_only else "")
            )
        if report.input_overrides:
            model_has = {
                key: _model_setting(self.model, key) for key in report.input_convention or {}
            }
            logger.warning(
                f"{report.path} holds weights trained on "
                f"{describe_convention(report.input_convention)}; this model reads "
                f"{describe_convention(model_has)}, so its features are not those the weights "
                f"were trained for. Set {shlex.join(report.input_overrides)} (or use the config "
                "the weights were made for, docs/MODEL_ZOO.md)"
            )
        file_classes = report.checkpoint_num_classes()
        layout = report.checkpoint_head_layout()
        anchors = report.num_anchors or 1
        for name, in_file, in_model in report.reinitialised:
            if name.startswith("head.cls_score") and layout is not None:
                logger.warning(
                    f"{name}: the checkpoint's head has another layout ({layout}; this model: "
                    f"{anchors} anchor{'s' if anchors > 1 else ''} x {report.num_classes} "
                    "classes per location): the classification and box layers are "
                    "re-initialised and train from scratch; for inference, use the config the "
                    "checkpoint was trained with"
                )
            elif name.startswith("head.cls_score") and file_classes is not None:
                logger.warning(
                    f"{name}: the checkpoint has {file_classes} classes, this model "
                    f"{report.num_classes} (MODEL.ATSS.NUM_CLASSES): the classification layer "
                    "is re-initialised (bias from MODEL.ATSS.PRIOR_PROB) and trains from "
                    "scratch; every other layer of the same shape is loaded"
                )
            else:
                logger.warning(
                    f"{name}: shape {tuple(in_file)} in the checkpoint, {tuple(in_model)} in "
                    "the model: left at its initialisation"
                )


def _file_convention(checkpoint: Mapping) -> Optional[Dict[str, object]]:
    """The input the weights of a loaded checkpoint were trained on, when the file says."""
    recorded = checkpoint.get("input_convention")
    if isinstance(recorded, Mapping):
        return dict(recorded)
    author = checkpoint.get("__author__")
    if author == "torchvision":
        # detectron2's tools/convert-torchvision-to-d2.py, which tells to set exactly these.
        return input_convention("torchvision")
    if author == "Caffe2":
        # Detectron / Caffe2 models read OpenCV's BGR images; mean, std and stride vary.
        return {"INPUT.FORMAT": "BGR"}
    return None


# The head's two towers, conv layers of the same order in ATSS and detectron2's RetinaNet.
_TOWERS = ("head.cls_subnet", "head.bbox_subnet")


def _tower_layers(state: Mapping[str, torch.Tensor], tower: str) -> Optional[Dict[int, bool]]:
    """Layer index -> whether it is a conv (a 4-d weight), of the tower's tensors in ``state``;
    None when it has none."""
    layers: Dict[int, bool] = {}
    for name, value in state.items():
        if not name.startswith(tower + "."):
            continue
        index, _, leaf = name[len(tower) + 1 :].partition(".")
        if not index.isdigit():
            return None  # not a Sequential of layers
        is_conv = leaf == "weight" and getattr(value, "dim", lambda: 0)() == 4
        layers[int(index)] = layers.get(int(index), False) or is_conv
    return layers or None


def _align_tower_convs(weights: Dict[str, torch.Tensor], model) -> Dict[str, torch.Tensor]:
    """
    ``weights`` with the convs of a head tower saved without normalisation layers (detectron2's
    RetinaNet with its default ``MODEL.RETINANET.NORM ""``: conv, ReLU, conv, ... at indices
    0, 2, 4, 6) renamed to the model's conv positions (conv, GroupNorm, ReLU: 0, 3, 6, 9), one
    to one in order, when both towers have as many convs; the model's GroupNorm layers then keep
    their initialisation. Without this, the checkpoint's convs would load where their index
    happens to be a conv of the model: RetinaNet's 4th conv into ATSS's 3rd.
    """
    state = model.state_dict()
    renames: Dict[str, str] = {}
    for tower in _TOWERS:
        source, target = _tower_layers(weights, tower), _tower_layers(state, tower)
        if source is None or target is None or not all(source.values()):
            continue  # absent, or the file's tower has norm layers of its own: names as they are
        source_convs = sorted(source)
        target_convs = sorted(i for i, is_conv in target.items() if is_conv)
        if source_convs == target_convs or len(source_convs) != len(target_convs):
            continue
        for i, j in zip(source_convs, target_convs):
            for leaf in ("weight", "bias"):  # ATSS's convs before a norm have no bias
                if f"{tower}.{i}.{leaf}" in weights and f"{tower}.{j}.{leaf}" in state:
                    renames[f"{tower}.{i}.{leaf}"] = f"{tower}.{j}.{leaf}"
        logger.info(
            f"{tower}: the file's {len(source_convs)} convs (layers {source_convs}, a tower "
            f"without normalisation, as detectron2's RetinaNet) load into the model's, in order "
            f"(layers {target_convs}); its normalisation layers keep their initialisation"
        )
    if not renames:
        return weights
    return {renames.get(name, name): value for name, value in weights.items()}


def model_input_convention(model) -> Dict[str, object]:
    """The input ``model`` reads, as :func:`~atss_d2.checkpoint.convert.input_convention`
    writes it (the keys the model shows: ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN`` / ``STD``,
    ``MODEL.RESNETS.STRIDE_IN_1X1``): what atss_d2's trainers save beside the weights, so that
    loading them into a model that reads its input otherwise is a warning."""
    keys = ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1")
    settings = {key: _model_setting(model, key) for key in keys}
    return {key: value for key, value in settings.items() if value is not None}


def _model_setting(model, key: str):
    """The value of config key ``key`` that ``model`` was built with, when it shows; else None."""
    if key == "INPUT.FORMAT":
        value = getattr(model, "input_format", None)
        return value if isinstance(value, str) else None
    if key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        value = getattr(model, "pixel_mean" if key == "MODEL.PIXEL_MEAN" else "pixel_std", None)
        return value.flatten().tolist() if isinstance(value, torch.Tensor) else None
    if key == "MODEL.RESNETS.STRIDE_IN_1X1":
        modules = dict(model.named_modules())
        conv1 = modules.get("backbone.bottom_up.res3.0.conv1")
        if conv1 is None or "backbone.bottom_up.res3.0.conv3" not in modules:
            return None  # no ResNet bottleneck (basic blocks have no 1x1 conv to stride in)
        return tuple(getattr(conv1, "stride", (1, 1))) != (1, 1)
    return None


def read_last_checkpoint_tag(path: str) -> str:
    """The file name that detectron2's ``last_checkpoint`` tag ``path`` holds ("" when empty)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(4096).strip()


def _tag_message(path: str) -> str:
    """What to say of detectron2's ``last_checkpoint`` tag given as a weights file."""
    name = read_last_checkpoint_tag(path)
    message = (
        f"Weights path {path!r} is detectron2's last_checkpoint tag (a text file naming the "
        "newest checkpoint of its directory), not a checkpoint file"
    )
    if not name:
        return message + ", and it is empty: set MODEL.WEIGHTS to a .pth file of that directory"
    target = os.path.join(os.path.dirname(path), name)
    return message + f": set MODEL.WEIGHTS to {target}, the checkpoint it names"


def _directory_message(path: str) -> str:
    """What to say of a directory given as a weights file: which file of it to give."""
    message = f"Weights path {path!r} is a directory, not a checkpoint file"
    final = os.path.join(path, "model_final.pth")
    tag = os.path.join(path, "last_checkpoint")
    if os.path.isfile(final):
        return f"{message}: set MODEL.WEIGHTS to {final}, the final model it holds"
    if os.path.isfile(tag):
        last = os.path.join(path, read_last_checkpoint_tag(tag))
        return (
            f"{message}: its last_checkpoint names {last}; set MODEL.WEIGHTS to it (or resume "
            f"with --resume and OUTPUT_DIR {path})"
        )
    return f"{message} (it holds no model_final.pth or last_checkpoint): give the file's path"
