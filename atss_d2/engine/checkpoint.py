"""
Crash-safe checkpoint saving.

fvcore's ``Checkpointer.save`` writes ``model_XXXX.pth`` in place and then rewrites the
``last_checkpoint`` tag in place: a process killed while writing leaves a truncated ``.pth`` (or
tag) behind, and ``--resume`` then fails on it. :class:`AtomicSaveMixin` writes each file to a
temporary name in the same directory, flushes it to disk and renames it over the target
(``os.replace``, atomic on POSIX and Windows), the ``.pth`` first and the tag after, so
``last_checkpoint`` always names a complete file. It also refuses to save weights that are NaN
or infinite, so that the last good checkpoint stays the one to resume from.

The mixin only overrides saving; combine it with any ``Checkpointer`` subclass (e.g. one that
loads safely) by listing it first: ``class C(AtomicSaveMixin, SomeCheckpointer)``.
"""

import glob
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

from ..checkpoint import SafeDetectionCheckpointer, WeightsNotFoundError, model_input_convention
from ..checkpoint.detection_checkpoint import IncompatibleWeightsError, read_last_checkpoint_tag

__all__ = [
    "AtomicCheckpointer",
    "AtomicSaveMixin",
    "SafeAtomicCheckpointer",
    "check_optimizer_state",
    "non_finite_tensors",
]

_TMP_SUFFIX = ".tmp"


def non_finite_tensors(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of a state dict holding a NaN or an infinity."""
    # A NaN or infinity makes the sum non-finite; summing is much faster than isfinite on the
    # CPU, and the exact test then rules out an overflowing sum of finite values.
    return [
        name
        for name, value in state_dict.items()
        if torch.is_tensor(value)
        and value.is_floating_point()
        and not math.isfinite(float(value.detach().sum(dtype=torch.float64)))
        and not bool(torch.isfinite(value).all())
    ]


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicSaveMixin:
    """
    Atomic ``save`` and ``tag_last_checkpoint`` for an fvcore ``Checkpointer`` (see the module
    docstring). Uses the checkpointer's ``model``, ``checkpointables``, ``save_dir``,
    ``save_to_disk`` and ``logger``. Save directories that are not local paths (``scheme://``)
    fall back to the base class's saving.
    """

    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def _atomic_write(self, path: str, write) -> None:
        """Call ``write(file)`` on a temporary file, then rename it to ``path``."""
        tmp = path + _TMP_SUFFIX
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_dir(os.path.dirname(path) or ".")

    # Saved in every checkpoint besides the model and checkpointables (see keep_class_names).
    extra_data: Dict[str, Any] = {}

    def keep_class_names(self, dataset_names: Sequence[str]) -> None:
        """Save the class names of the first of ``dataset_names`` (the training sets) in every
        checkpoint, as ``"thing_classes"``: inference then names the classes, and refuses data
        that lists them in another order (:func:`atss_d2.engine.predictor.check_class_names`)."""
        classes = (
            MetadataCatalog.get(dataset_names[0]).get("thing_classes") if dataset_names else None
        )
        if classes:
            self.extra_data = {"thing_classes": list(classes)}

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Save the model, checkpointables and :attr:`extra_data` to ``{save_dir}/{name}.pth``
        atomically, then tag it as the last checkpoint. Skipped (with an error logged, the
        previous checkpoint and tag left as they are) when the model's weights are not finite.
        """
        # With the input the weights are trained on, for the loader's check of a model that
        # reads its input otherwise (model_input_convention).
        kwargs = {
            "input_convention": model_input_convention(self.model),
            **self.extra_data,
            **kwargs,
        }
        if not self.save_dir or not self.save_to_disk:
            return
        model_state = self.model.state_dict()
        bad = non_finite_tensors(model_state)
        if bad:
            self.logger.error(
                f"Not saving checkpoint {name!r}: the model has NaN or infinite values in "
                f"{len(bad)} tensor(s), e.g. {bad[:5]}; the last checkpoint stays "
                f"{self.get_checkpoint_file() or 'none'!r}"
            )
            return
        if not self._is_local():
            super().save(name, **kwargs)
            return

        data = {"model": model_state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        os.makedirs(self.save_dir, exist_ok=True)
        # Leftovers of a run killed while writing: never tagged, safe to remove.
        for stale in glob.glob(os.path.join(glob.escape(self.save_dir), "*.pth" + _TMP_SUFFIX)):
            os.remove(stale)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self._atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``{save_dir}/last_checkpoint`` at ``last_filename_basename``, atomically."""
        if not self._is_local():
            super().tag_last_checkpoint(last_filename_basename)
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        self._atomic_write(path, lambda f: f.write(last_filename_basename.encode("utf-8")))


class AtomicCheckpointer(AtomicSaveMixin, DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and refuse non-finite weights."""


def check_optimizer_state(optimizer, saved, model, path: str) -> None:
    """
    Refuse an optimizer state dict ``saved`` (from checkpoint ``path``) that does not fit
    ``optimizer``, whose parameters are ``model``'s: other parameter groups or counts, or
    per-parameter state (momentum, moments) of another shape than its parameter. torch's
    ``load_state_dict`` checks only the counts; the first step then fails deep in the optimizer
    on the shapes or, with a fused kernel, runs on state of another size.

    Raises:
        IncompatibleWeightsError: naming the file and the parameters.
    """
    if saved is None:
        return
    fix = (
        "the config's model differs from the one of the run saved there (another "
        "MODEL.ATSS.NUM_CLASSES / model.num_classes?). Resume with that run's own config (its "
        "OUTPUT_DIR/config.yaml), or fine-tune from the checkpoint in a new run: another output "
        f"directory, MODEL.WEIGHTS (train.init_checkpoint) {path} and no --resume"
    )
    groups = saved.get("param_groups", [])
    sizes = [len(g["params"]) for g in groups]
    expected = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != expected:
        raise IncompatibleWeightsError(
            f"--resume: the optimizer state in {path} is for {sum(sizes)} parameters in "
            f"{len(sizes)} groups, this model's optimizer has {sum(expected)} in "
            f"{len(expected)}: {fix}"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    state = saved.get("state", {})
    wrong = []
    for group, saved_group in zip(optimizer.param_groups, groups):
        for param, index in zip(group["params"], saved_group["params"]):
            for value in state.get(index, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    name = names.get(id(param), f"parameter #{index}")
                    wrong.append(
                        f"{name.removeprefix('module.')}: {tuple(value.shape)} in the "
                        f"checkpoint, {tuple(param.shape)} in the model"
                    )
                    break
    if wrong:
        raise IncompatibleWeightsError(
            f"--resume: the optimizer state in {path} does not fit {len(wrong)} parameter(s) "
            f"({'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}): {fix}"
        )


def _saved_optimizer_state(entry: Any) -> Optional[Dict[str, Any]]:
    """The optimizer state dict in a checkpointable's saved state: an optimizer's own, or the
    ``"optimizer"`` of a trainer's (``SimpleTrainer``; ``DefaultTrainer``'s under
    ``"_trainer"``)."""
    if not isinstance(entry, dict):
        return None
    if "param_groups" in entry:
        return entry
    if isinstance(entry.get("optimizer"), dict):
        return entry["optimizer"]
    return _saved_optimizer_state(entry.get("_trainer"))


def _checkpoints_in(save_dir: str) -> List[str]:
    """The ``.pth`` files of ``save_dir``, newest first."""
    files = glob.glob(os.path.join(glob.escape(save_dir), "*.pth"))
    return [os.path.basename(f) for f in sorted(files, key=os.path.getmtime, reverse=True)]


class SafeAtomicCheckpointer(AtomicSaveMixin, SafeDetectionCheckpointer):
    """Atomic saves (:class:`AtomicSaveMixin`) and loading that never unpickles code
    (:class:`~atss_d2.checkpoint.SafeDetectionCheckpointer`): the trainer's checkpointer.
    ``resume_or_load(..., resume=True)`` refuses, naming the tag file, a ``last_checkpoint``
    that is empty or names a file that is not there (fvcore would try to load the directory,
    or the missing name, as weights), and optimizer state that does not fit the model
    (:func:`check_optimizer_state`)."""

    _resuming = False

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        if self._is_local():
            self.check_last_checkpoint()
        self._resuming = True  # the optimizer state is loaded too: see _load_file
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def _load_file(self, filename: str):
        checkpoint = super()._load_file(filename)
        if self._resuming:
            for key, obj in self.checkpointables.items():
                optimizer = obj if isinstance(obj, torch.optim.Optimizer) else None
                if optimizer is None:
                    optimizer = getattr(obj, "optimizer", None)  # a trainer's
                saved = _saved_optimizer_state(checkpoint.get(key))
                if isinstance(optimizer, torch.optim.Optimizer) and saved is not None:
                    check_optimizer_state(optimizer, saved, self.model, filename)
        return checkpoint

    def check_last_checkpoint(self) -> str:
        """
        The checkpoint file that ``{save_dir}/last_checkpoint`` names.

        Raises:
            WeightsNotFoundError: the tag is empty, or names a file that does not exist; the
                message lists the checkpoints of the directory.
        """
        tag = os.path.join(self.save_dir, "last_checkpoint")
        name = read_last_checkpoint_tag(tag)
        found = _checkpoints_in(self.save_dir)
        fix = "delete it to start from MODEL.WEIGHTS (train.init_checkpoint) instead"
        if found:
            fix = (
                f"write the name of one of the directory's checkpoints ({', '.join(found[:4])}"
                f"{', ...' if len(found) > 4 else ''}) into it, or {fix}"
            )
        else:
            fix = f"the directory holds no checkpoint: {fix}"
        if not name:
            raise WeightsNotFoundError(
                f"--resume: {tag} is empty, but it should name the checkpoint to resume from: "
                f"{fix}"
            )
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise WeightsNotFoundError(
                f"--resume: {tag} names {name!r}, which is not a file in {self.save_dir}: {fix}"
            )
        return path
