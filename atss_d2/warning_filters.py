"""
Warnings that torch and Pillow print about code in detectron2 0.6 and fvcore, at start-up, on
the first forward pass or when several processes train: nothing a user of atss_d2 can change.
Each is ignored by its message, class and the module it is attributed to; every other warning
is shown as Python would show it.

``import atss_d2`` installs these filters before it imports detectron2. Those of import-time
warnings must be in place before the import that triggers them: ``train_net.py``, ``demo/demo.py``
and the tools that import detectron2 at the top import ``atss_d2.warning_filters`` first; a
script of yours should ``import atss_d2`` before importing from ``detectron2.engine`` or
``detectron2.modeling``.

A filter cannot tell callers apart: the ``torch.jit.script`` and ``torch.meshgrid`` warnings
are attributed to torch's own modules, so they are ignored for every caller. Without the
filters too, each is normally printed once per process, at fvcore's or detectron2's call.

The filters go in front of those given with ``-W`` or ``PYTHONWARNINGS``, so a run with
``-W error`` is not stopped by these warnings.
"""

import re
import warnings
from typing import NamedTuple, Type

__all__ = ["WarningFilter", "FILTERS", "install_warning_filters"]


class WarningFilter(NamedTuple):
    message: str  # regex matched, case-insensitively, from the start of the warning's text
    category: Type[Warning]  # the warning's class (its subclasses match too)
    module: str  # regex matched against the name of the module the warning is attributed to


FILTERS = (
    # fvcore/nn/focal_loss.py (imported by detectron2.engine and detectron2.modeling) and
    # detectron2/modeling/box_regression.py call torch.jit.script at import time, which torch
    # has deprecated. The warning is attributed to torch's own line, not to the caller. The
    # Python 3.14 variant ("is not supported in Python 3.14+ and may break") is not ignored.
    WarningFilter(
        message=re.escape(
            "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
        )
        + r"\Z",
        category=FutureWarning,
        module=r"torch\.jit\._script\Z",
    ),
    # detectron2/modeling/anchor_generator.py (_create_grid_offsets, run by every anchor
    # generator atss_d2 builds, on each forward) calls torch.meshgrid without `indexing`; its
    # "ij" default is what detectron2 relies on. torch warns once per process, from C++,
    # attributed to torch/functional.py.
    WarningFilter(
        message=re.escape(
            "torch.meshgrid: in an upcoming release, it will be required to pass the indexing "
            "argument."
        ),
        category=UserWarning,
        module=r"torch\.functional\Z",
    ),
    # detectron2/data/transforms/transform.py uses PIL.Image.LINEAR as a default argument
    # (ExtentTransform), deprecated in Pillow 9 and removed in Pillow 10 (detectron2 0.6 then
    # fails to import, hence tools/install_detectron2.py's Pillow<10). Python hides
    # DeprecationWarnings raised outside __main__ unless run with -W default, -X dev or pytest.
    WarningFilter(
        message=r"LINEAR is deprecated and will be removed in Pillow 10\b",
        category=DeprecationWarning,
        module=r"detectron2\.data\.transforms\.transform\Z",
    ),
    # With several processes, detectron2/engine/defaults.py (create_ddp_model) builds
    # DistributedDataParallel with broadcast_buffers=False, as DefaultTrainer (and ATSSTrainer
    # for CPU processes) asks. Its replacement, forward_sync_buffers=False, also syncs the
    # buffers at the start, so it is not the same; torch's message says to keep the old one.
    WarningFilter(
        message=re.escape(
            "`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead. IMPORTANT:"
        ),
        category=FutureWarning,
        module=r"detectron2\.engine\.defaults\Z",
    ),
    # detectron2/utils/comm.py (_serialize_to_tensor, behind all_gather / gather: the metrics
    # and evaluation results of several processes) builds a torch.ByteStorage, a TypedStorage.
    # torch warns once per process.
    WarningFilter(
        message=r"TypedStorage is deprecated\. It will be removed in the future",
        category=UserWarning,
        module=r"detectron2\.utils\.comm\Z",
    ),
    # detectron2/engine/defaults.py (default_setup) logs the config file's text with
    # PathManager.open(args.config_file).read() and never closes it. ResourceWarnings are hidden
    # unless run with -W default or -X dev.
    WarningFilter(
        message=r"unclosed file <_io\.TextIOWrapper name=.* mode='r'",
        category=ResourceWarning,
        module=r"detectron2\.engine\.defaults\Z",
    ),
)


def install_warning_filters() -> None:
    """Put an "ignore" filter for each of :data:`FILTERS` in front of ``warnings.filters``.
    Calling it again moves them to the front again; nothing is duplicated."""
    for f in reversed(FILTERS):
        warnings.filterwarnings("ignore", message=f.message, category=f.category, module=f.module)


install_warning_filters()
