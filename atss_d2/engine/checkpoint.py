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
from typing import Any, Dict, List, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

from ..checkpoint import SafeDetectionCheckpointer

__all__ = [
    "AtomicCheckpointer",
    "AtomicSaveMixin",
    "SafeAtomicCheckpointer",
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
        kwargs = {**self.extra_data, **kwargs}
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


class SafeAtomicCheckpointer(AtomicSaveMixin, SafeDetectionCheckpointer):
    """Atomic saves (:class:`AtomicSaveMixin`) and loading that never unpickles code
    (:class:`~atss_d2.checkpoint.SafeDetectionCheckpointer`): the trainer's checkpointer."""
