"""
A short training run through train_net.py and a demo/demo.py run print no Python warning, and
the filters that make them quiet (atss_d2.warning_filters) hide only the third-party warnings
they name.

The programs run in fresh processes with ``-W default`` and without ``PYTHONWARNINGS``: every
warning is shown once per location, including the DeprecationWarnings and ResourceWarnings that
Python hides by default, so a warning a user would see by default shows here as well.
"""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_setup import REPO, TINY_OPTS, image_dicts, write_coco_json

from atss_d2.warning_filters import FILTERS, install_warning_filters

# How Python's default warning display starts a line: "path:line: SomeWarning: message".
WARNING_LINE = re.compile(r"\w+Warning: ")


def _run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONDEVMODE")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-W", "default", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _warning_lines(result):
    return [
        line for line in (result.stderr + result.stdout).splitlines() if WARNING_LINE.search(line)
    ]


def _train(tmp_path, *flags):
    dicts = image_dicts(tmp_path / "images", num_images=4)
    json_file = write_coco_json(tmp_path / "train.json", dicts)
    out = tmp_path / "out"
    result = _run(
        REPO / "train_net.py", *flags, "--config-file", REPO / "configs" / "Base-ATSS.yaml",
        "--coco-dataset", "quiet_tiny", json_file, tmp_path / "images",
        *TINY_OPTS, "SOLVER.MAX_ITER", "2",
        "DATASETS.TRAIN", "('quiet_tiny',)", "DATASETS.TEST", "('quiet_tiny',)",
        "OUTPUT_DIR", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # It trained (forward passes: the anchors) and evaluated (the test loader, COCO API).
    assert (out / "model_final.pth").is_file()
    assert "copypaste: AP,AP50" in result.stdout + result.stderr
    return result


def test_training_and_evaluation_print_no_warning(tmp_path):
    assert _warning_lines(_train(tmp_path)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="--num-gpus 2 would mean two GPUs")
def test_two_cpu_processes_print_no_warning(tmp_path):
    # DistributedDataParallel and the gathering of metrics and results across processes.
    result = _train(tmp_path, "--num-gpus", "2", "--dist-url", f"file://{tmp_path / 'rdzv'}")
    assert "World size: 2" in result.stdout + result.stderr
    assert _warning_lines(result) == []


def test_demo_prints_no_warning(tmp_path):
    pixels = np.full((96, 120, 3), 30, np.uint8)
    pixels[10:40, 20:60] = (230, 200, 40)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    result = _run(
        REPO / "demo" / "demo.py",
        "--config-file", REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.yaml",
        "--input", tmp_path / "a.png", "--output", tmp_path / "out",
        "--opts", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "a.png").is_file()
    assert _warning_lines(result) == []


def test_import_is_quiet_and_other_warnings_still_show():
    # In a real process: nothing from importing atss_d2 (and detectron2 through it), while
    # warnings of the classes it filters, from elsewhere, are printed as usual.
    code = (
        "import warnings, atss_d2\n"
        "warnings.warn('own future warning', FutureWarning)\n"
        "warnings.warn('own user warning', UserWarning)\n"
        "warnings.warn('own deprecation warning', DeprecationWarning)\n"
    )
    result = _run("-c", code, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.findall(r"(\w+Warning): (.*)", result.stderr + result.stdout) == [
        ("FutureWarning", "own future warning"),
        ("UserWarning", "own user warning"),
        ("DeprecationWarning", "own deprecation warning"),
    ]


JIT = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
MESHGRID = (
    "torch.meshgrid: in an upcoming release, it will be required to pass the indexing argument."
    " (Triggered internally at /__w/pytorch/pytorch/aten/src/ATen/native/TensorShape.cpp:4221.)"
)
LINEAR = (
    "LINEAR is deprecated and will be removed in Pillow 10 (2023-07-01). "
    "Use BILINEAR or Resampling.BILINEAR instead."
)
UNCLOSED = "unclosed file <_io.TextIOWrapper name='configs/x.yaml' mode='r' encoding='UTF-8'>"
BROADCAST = (
    "`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead. IMPORTANT: unlike "
    "`broadcast_buffers=False`, `forward_sync_buffers=False` still syncs buffers at init."
)
TYPED_STORAGE = (
    "TypedStorage is deprecated. It will be removed in the future and UntypedStorage will be the "
    "only storage class."
)

# (message, class, module the warning is attributed to, hidden?)
CASES = [
    # What the third-party code issues (see atss_d2/warning_filters.py): hidden.
    (JIT, FutureWarning, "torch.jit._script", True),
    (MESHGRID, UserWarning, "torch.functional", True),
    (LINEAR, DeprecationWarning, "detectron2.data.transforms.transform", True),
    (UNCLOSED, ResourceWarning, "detectron2.engine.defaults", True),
    (BROADCAST, FutureWarning, "detectron2.engine.defaults", True),
    (TYPED_STORAGE, UserWarning, "detectron2.utils.comm", True),
    # The same messages from other modules: shown.
    (JIT, FutureWarning, "my_project", False),
    (JIT, FutureWarning, "torch.jit._script_helpers", False),
    (MESHGRID, UserWarning, "torch.functional_extra", False),
    (LINEAR, DeprecationWarning, "my_project.transforms", False),
    (UNCLOSED, ResourceWarning, "my_project", False),
    (BROADCAST, FutureWarning, "my_project.trainer", False),
    (TYPED_STORAGE, UserWarning, "my_project", False),
    # Other messages or classes from the same modules: shown.
    ("some other deprecation", FutureWarning, "torch.jit._script", False),
    (
        "`torch.jit.script` is not supported in Python 3.14+ and may break. "
        "Please switch to `torch.compile` or `torch.export`.",
        FutureWarning,
        "torch.jit._script",
        False,
    ),
    (JIT + " And more.", FutureWarning, "torch.jit._script", False),
    (JIT, UserWarning, "torch.jit._script", False),
    ("an unrelated user warning", UserWarning, "torch.functional", False),
    (MESHGRID, RuntimeWarning, "torch.functional", False),
    ("NEAREST is deprecated and will be removed", DeprecationWarning,
     "detectron2.data.transforms.transform", False),  # fmt: skip
    ("unclosed <socket.socket fd=3>", ResourceWarning, "detectron2.engine.defaults", False),
    ("Both `broadcast_buffers` and `forward_sync_buffers` were specified.", FutureWarning,
     "detectron2.engine.defaults", False),  # fmt: skip
    (TYPED_STORAGE, FutureWarning, "detectron2.utils.comm", False),
    ("unclosed file <_io.BufferedWriter name='x.pth'>", ResourceWarning,
     "detectron2.engine.defaults", False),  # fmt: skip
]


@pytest.mark.parametrize("message,category,module,hidden", CASES)
def test_filters_hide_only_the_named_warnings(message, category, module, hidden):
    with warnings.catch_warnings(record=True) as caught:
        # Only atss_d2's filters, in front of "show everything".
        warnings.resetwarnings()
        warnings.simplefilter("always")
        install_warning_filters()
        warnings.warn_explicit(message, category, filename="x.py", lineno=1, module=module)
    assert len(caught) == (0 if hidden else 1)


def test_installing_twice_adds_nothing():
    with warnings.catch_warnings():
        warnings.resetwarnings()
        install_warning_filters()
        first = list(warnings.filters)
        install_warning_filters()
        assert warnings.filters == first
        assert len(first) == len(FILTERS)
        assert all(f[0] == "ignore" and f[2] is not Warning for f in first)
