"""
Loading checkpoint files without executing code from them.

A pickle can name any importable callable and have it called while loading (``__reduce__``), so a
downloaded checkpoint can run arbitrary code under ``torch.load(weights_only=False)`` or
``pickle.load``. Everything here accepts only data:

- torch files (zip or legacy format): ``torch.load(weights_only=True)`` (tensors, numbers,
  strings, containers), plus numpy arrays, dtypes and scalars, and the loss history mmengine
  saves in mmdetection 3.x checkpoints, kept as inert data (:class:`FrameworkRecord`).
- ``.pkl`` files (detectron2 / Detectron model zoo): a restricted unpickler that resolves only
  numpy arrays, dtypes, scalars and ``OrderedDict``; builtin containers need no lookup at all.

Anything else raises :class:`UnsafeCheckpointError` naming the file and the refused global,
before the global is imported or called. A file that is no zip or pickle at all (an HTML page
saved by a failed download, an empty or unrelated file) raises :class:`CheckpointReadError`.
"""

import os
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Tuple

import numpy as np
import torch

__all__ = [
    "CheckpointReadError",
    "FrameworkRecord",
    "UnsafeCheckpointError",
    "check_file_format",
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


class FrameworkRecord:
    """
    What a bookkeeping object of a training framework in a checkpoint loads as: its pickled
    state, kept as data. No module of that framework is imported and none of its code runs.
    """

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"FrameworkRecord({self.state!r})" if hasattr(self, "state") else "FrameworkRecord()"


# Classes that training frameworks pickle next to the weights, outside the model state dict:
# mmengine's loss / metric history (``message_hub["log_scalars"]`` of every mmdetection 3.x
# checkpoint, mmengine/logging/history_buffer.py). Loaded as FrameworkRecord.
_FRAMEWORK_RECORDS = ("mmengine.logging.history_buffer.HistoryBuffer",)


def _torch_safe_globals() -> list:
    multiarray = _numpy_multiarray()
    return [
        *((FrameworkRecord, name) for name in _FRAMEWORK_RECORDS),
        np.ndarray,
        np.dtype,
        *_numpy_dtype_classes(),
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]


_PICKLE_OPCODES = frozenset(op.code.encode("latin1")[0] for op in pickletools.opcodes)
_ZIP_MAGIC = b"PK\x03\x04"
# How a pickle of a checkpoint starts: PROTO and its number (protocols 2 and above, torch's
# legacy format), or, in protocols 0 and 1, the opening of a dict (MARK of "(dp0", EMPTY_DICT)
# or the GLOBAL of an OrderedDict, or the number torch's legacy format starts with.
_PICKLE_STARTS = (b"(", b"}", b"c", b"L", b"I")  # L, I: torch's legacy magic number


def _starts_like_a_pickle(head: bytes) -> bool:
    if head[:1] == pickle.PROTO:
        return len(head) > 1 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL
    return head[:1] in _PICKLE_STARTS


def _unknown_opcode(error: Exception) -> bool:
    """Whether torch's weights-only unpickler stopped at a byte that is no pickle opcode at all
    (a damaged or foreign file), rather than at an opcode or object it does not accept."""
    match = re.search(r"Unsupported operand (\d+)", str(error))
    return match is not None and int(match.group(1)) not in _PICKLE_OPCODES


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, also accepting numpy arrays."""
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _unknown_opcode(e):
            raise CheckpointReadError(
                f"Cannot read checkpoint file {path!r}: it is not a valid pickle "
                f"({_short_reason(e)}, which is no pickle opcode). Is it truncated (an "
                "interrupted download) or another format?"
            ) from None
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


def check_file_format(path: str) -> None:
    """
    Raise :class:`CheckpointReadError` when the start of ``path`` shows that it is no checkpoint:
    empty, an HTML page (what a failed or blocked download saves), or neither a zip (torch's
    format) nor a pickle (torch's legacy format, ``.pkl`` model-zoo files).
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointReadError(
            f"{path!r} is not a checkpoint: it is empty (0 bytes; an interrupted download or "
            "copy?). Download or copy it again."
        )
    if head.startswith(_ZIP_MAGIC):
        return
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        raise CheckpointReadError(
            f"{path!r} is not a checkpoint: it starts with '<' (an HTML page: a failed "
            "download?). Open it in a text editor to see the page, then download the file "
            "again (from a browser if the site shows a confirmation page)."
        )
    if path.endswith(".safetensors"):
        raise CheckpointReadError(
            f"{path!r} is a safetensors file, which detectron2 does not read: save its tensors "
            'as a .pth first, e.g. python -c "import sys, torch; from safetensors.torch import '
            "load_file; torch.save({'model': load_file(sys.argv[1])}, sys.argv[2])\" IN OUT"
        )
    if not _starts_like_a_pickle(head):
        raise CheckpointReadError(
            f"{path!r} is not a checkpoint: it is neither a zip nor a pickle file (it starts "
            f"with {head[:8]!r}). MODEL.WEIGHTS takes .pth / .pkl files saved by torch, "
            "detectron2 or tools/convert_checkpoint.py."
        )


def load_checkpoint_file(path: str) -> Any:
    """
    Load a checkpoint file without arbitrary unpickling: torch zip files (recognised by content)
    and other non-``.pkl`` files with :func:`safe_torch_load`, ``.pkl`` files with
    :func:`safe_pickle_load`.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs code execution to load; nothing was executed.
        CheckpointReadError: the file is not a readable checkpoint (empty, an HTML page,
            truncated, another format); a ``ValueError``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path!r} does not exist")
    check_file_format(path)
    try:
        if zipfile.is_zipfile(path) or not path.endswith(".pkl"):
            return safe_torch_load(path)
        return safe_pickle_load(path)
    except (UnsafeCheckpointError, CheckpointReadError):
        raise
    except Exception as e:  # corrupt or foreign files fail in many ways inside the unpicklers
        raise CheckpointReadError(
            f"Cannot read checkpoint file {path!r}: {type(e).__name__}: {e}. Is it truncated "
            "(an interrupted download) or another format?"
        ) from e
