"""A ``DetectionCheckpointer`` that never unpickles arbitrary objects and says what it loaded."""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer

from .safe_load import CheckpointReadError, load_checkpoint_file

__all__ = [
    "IncompatibleWeightsError",
    "LoadReport",
    "SafeDetectionCheckpointer",
    "WeightsNotFoundError",
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
    """

    path: str
    parts: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    reinitialised: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    num_classes: Optional[int] = None

    def checkpoint_num_classes(self) -> Optional[int]:
        """The number of classes of the file's classification layer when it differs from the
        model's (``head.cls_score`` re-initialised), else None. The layer has (anchors per
        location x classes) outputs; the anchors per location are the model's, or the file's
        when its box regression layer differs too."""
        shapes = {name: (in_file, in_model) for name, in_file, in_model in self.reinitialised}
        if "head.cls_score.weight" not in shapes or not self.num_classes:
            return None
        in_file, in_model = shapes["head.cls_score.weight"]
        anchors = max(in_model[0] // self.num_classes, 1)
        if "head.bbox_pred.weight" in shapes:
            anchors = max(shapes["head.bbox_pred.weight"][0][0] // 4, 1)
        return in_file[0] // anchors

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
    file, a failed download or an unreadable file raises :class:`WeightsNotFoundError` or
    :class:`CheckpointReadError` naming it.

    After each load, :attr:`last_load_report` (a :class:`LoadReport`) says which parts of the
    model came from the file; the parts that start from scratch and any re-initialised layer
    (e.g. the classification layer of a checkpoint with another number of classes) are logged.
    """

    last_load_report = None

    def load(self, path, *args, **kwargs):
        self.last_load_report = None
        self._given_path = path
        if path:
            path = self._local_path(path)
        return super().load(path, *args, **kwargs)

    def _local_path(self, path: str) -> str:
        if os.path.isfile(path):
            return path
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

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self.last_load_report = self._report(incompatible)
        self._log_report(self.last_load_report)
        return incompatible

    def _report(self, incompatible) -> LoadReport:
        not_loaded = set(incompatible.missing_keys)
        not_loaded.update(k for k, _, _ in incompatible.incorrect_shapes)
        report = LoadReport(getattr(self, "_given_path", ""))
        report.parts = {part: (0, 0) for _, part in _PARTS}  # in this order in the log
        for name in self.model.state_dict():
            if name.rsplit(".", 1)[-1] in _CONFIG_BUFFERS or name.endswith("num_batches_tracked"):
                continue
            part = _part_of(name)
            loaded, total = report.parts.get(part, (0, 0))
            report.parts[part] = (loaded + (name not in not_loaded), total + 1)
        report.parts = {part: counts for part, counts in report.parts.items() if counts[1]}
        report.reinitialised = list(incompatible.incorrect_shapes)
        report.num_classes = getattr(getattr(self.model, "head", None), "num_classes", None)
        return report

    def _log_report(self, report: LoadReport) -> None:
        summary = ", ".join(f"{p} {n}/{t}" for p, (n, t) in report.parts.items())
        logger.info(f"Tensors loaded from {report.path}: {summary}")
        scratch = report.from_scratch()
        if scratch:
            logger.info(
                f"Not in {report.path}, starting from scratch: {', '.join(scratch)} "
                "(normal for an ImageNet backbone file)"
            )
        file_classes = report.checkpoint_num_classes()
        for name, in_file, in_model in report.reinitialised:
            if name.startswith("head.cls_score") and file_classes is not None:
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
