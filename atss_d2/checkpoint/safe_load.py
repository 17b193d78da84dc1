"""
Loading checkpoint files without executing code from them.

A pickle can name any importable callable and have it called while loading (``__reduce__``), so a
downloaded checkpoint can run arbitrary code under ``torch.load(weights_only=False)`` or
``pickle.load``. Everything here accepts only data:

- torch files (zip or legacy format): ``torch.load(weights_only=True)`` (tensors, numbers,
  strings, containers), plus numpy arrays, dtypes and scalars.
- ``.pkl`` files (detectron2 / Detectron model zoo): a restricted unpickler that resolves only
  numpy arrays, dtypes, scalars and ``OrderedDict``; builtin containers need no lookup at all.

Anything else raises :class:`UnsafeCheckpointError` naming the file and the refused global,
before the global is imported or called.
"""

import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Tuple

import numpy as np
import torch

__all__ = [
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "load_checkpoint_file",
    "safe_pickle_load",
    "safe_torch_load",
]


class CheckpointReadError(ValueError):
    """A checkpoint file that exists but is not readable (truncated, another format)."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file that would need arbitrary unpickling (code execution) to load."""


def _numpy_multiarray():
    # numpy >= 2 moved numpy.core to numpy._core; pickles written by either name both.
    core = getattr(np, "_core", None) or np.core
    return core.multiarray


def _allowed_pickle_globals() -> Dict[Tuple[str, str], Any]:
    multiarray = _numpy_multiarray()
    allowed: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        # Protocol-2 pickles written by Python 3 encode bytes (numpy buffers) this way; it only
        # turns a str into bytes.
        ("_codecs", "encode"): _latin1_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


def _latin1_encode(text, encoding="latin1", errors="strict"):
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafeCheckpointError("_codecs.encode called with non-string arguments")
    return text.encode(encoding, errors)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of :func:`_allowed_pickle_globals`; never imports a module."""

    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")
        self._filename = filename
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load {self._filename!r}: it references the Python global "
                f"'{module}.{name}', and unpickling it could run arbitrary code. Only numpy "
                "arrays, numbers, strings and containers are accepted in .pkl checkpoints."
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            f"Refusing to load {self._filename!r}: it uses pickle persistent ids (e.g. a torch "
            "file renamed to .pkl); save it as .pth or convert it to numpy arrays."
        )


def safe_pickle_load(path: str) -> Any:
    """Load a plain pickle (e.g. a detectron2 model-zoo ``.pkl``) accepting only data."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, path).load()


def _numpy_dtype_classes() -> list:
    # numpy >= 1.25 gives every dtype its own class (numpy.dtypes.Float32DType, ...), which
    # torch's unpickler must be allowed to instantiate; object arrays are left out on purpose.
    classes = {type(np.dtype(code)) for code in np.typecodes["All"] if code != "O"}
    return sorted((c for c in classes if c is not np.dtype), key=lambda c: c.__name__)


def _torch_safe_globals() -> list:
    multiarray = _numpy_multiarray()
    return [
        np.ndarray,
        np.dtype,
        *_numpy_dtype_classes(),
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, also accepting numpy arrays."""
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refusing to load {path!r}: it contains Python objects that torch.load("
            f"weights_only=True) does not accept, and loading them could run arbitrary code "
            f"({_short_reason(e)}). Only tensors, numpy arrays, numbers, strings and "
            "containers are accepted. If you trust the file, re-save just its tensors."
        ) from None


def _short_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("GLOBAL", "Unsupported", "Can only build")):
            return line.replace("WeightsUnpickler error: ", "")
    return lines[-1] if lines else type(error).__name__


def load_checkpoint_file(path: str) -> Any:
    """
    Load a checkpoint file without arbitrary unpickling: torch zip files (recognised by content)
    and other non-``.pkl`` files with :func:`safe_torch_load`, ``.pkl`` files with
    :func:`safe_pickle_load`.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs code execution to load; nothing was executed.
        CheckpointReadError: the file is not a readable checkpoint (truncated, another
            format); a ``ValueError``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path!r} does not exist")
    try:
        if zipfile.is_zipfile(path) or not path.endswith(".pkl"):
            return safe_torch_load(path)
        return safe_pickle_load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # corrupt or foreign files fail in many ways inside the unpicklers
        raise CheckpointReadError(
            f"Cannot read checkpoint file {path!r}: {type(e).__name__}: {e}. Is it truncated "
            "(an interrupted download) or another format?"
        ) from e
