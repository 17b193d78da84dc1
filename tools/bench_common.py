"""
Helpers shared by the tools that time atss_d2 or compare it with mmdetection
(``tools/benchmark.py``, ``tools/benchmark_matcher.py``, ``tools/check_mmdet_parity.py``):
timing, peak memory, and running mmdetection with mmcv-lite or in another interpreter. Imports
only the standard library and torch, so that the mmdetection workers of those tools can use it
from another virtual environment.
"""

import ctypes
import gc
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "OpCounter",
    "PeakMemory",
    "count_ops",
    "group_norm",
    "mmcv_ext_placeholder",
    "machine_info",
    "median",
    "random_gt",
    "run_mmdet_worker",
    "sync",
    "time_call",
]


def group_norm(channels: int) -> torch.nn.Module:
    """A ``norm`` callable for detectron2's dense heads that builds exactly ``get_norm("GN", c)``
    (GroupNorm(32, c)) for every real layer. detectron2 0.6's ``RetinaNetHead`` also calls it
    with 1 channel to name the norm type (and discards the result); current torch rejects
    GroupNorm(32, 1), so that probe gets GroupNorm(1, 1)."""
    return torch.nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the ``with`` block (views included): on a GPU,
    roughly the kernel launches, which bound small workloads. Counters nest: an inner one's ops
    are counted by the outer one too."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    """Number of ATen ops ``fn()`` dispatches (see :class:`OpCounter`)."""
    with OpCounter() as counter:
        fn()
    return counter.count


def sync(device: str) -> None:
    """Wait for queued kernels, so that wall-clock timings mean something on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, iters: int, warmup: int) -> List[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times; returns the seconds of each
    timed run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM missing from /proc/self/status")


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that RSS reflects live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """
    Extra memory used by the code inside the ``with`` block, in bytes (``.extra``).

    CUDA: ``torch.cuda.max_memory_allocated()`` minus what was allocated on entry (tensors only,
    not the caching allocator's reserve). CPU: peak resident set size minus the RSS on entry.
    The peak is Linux's VmHWM after resetting it with ``/proc/self/clear_refs`` (exact); where
    that is not allowed, a thread samples the RSS every millisecond (may miss short peaks).
    Python's ``tracemalloc`` does not see torch's allocations, so it is not used.
    """

    def __init__(self, device: str):
        self.device = device
        self.extra: Optional[int] = None
        self.method = ""
        self._base = 0
        self._stop = threading.Event()
        self._sampler: Optional[threading.Thread] = None
        self._sampled_peak = 0

    def __enter__(self):
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self._base = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self.method = "peak RSS (VmHWM after clear_refs)"
        except OSError:
            self.method = "peak RSS (sampled every 1 ms)"
            self._sampled_peak = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._sampled_peak = max(self._sampled_peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self._base
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.extra = max(self._sampled_peak, _rss_bytes()) - self._base
        else:
            self.extra = _hwm_bytes() - self._base
        return False


def machine_info(device: str) -> Dict[str, object]:
    """What the numbers were measured on."""
    info: Dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def random_gt(num: int, height: int, width: int, seed: int, device: str) -> torch.Tensor:
    """``num`` boxes (XYXY) of COCO-like sizes: side sqrt(area) log-uniform in [12, 600] px,
    aspect ratio log-uniform in [1/3, 3], centre uniform in the image, clipped to it."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(num).uniform_(math.log(12), math.log(600), generator=g))
    ratio = torch.exp(torch.empty(num).uniform_(-math.log(3), math.log(3), generator=g))
    w, h = side * ratio.sqrt(), side / ratio.sqrt()
    cx = torch.rand(num, generator=g) * width
    cy = torch.rand(num, generator=g) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    boxes[:, 2] = torch.maximum(boxes[:, 2], boxes[:, 0] + 1)
    boxes[:, 3] = torch.maximum(boxes[:, 3], boxes[:, 1] + 1)
    return boxes.to(device)


def mmcv_ext_placeholder() -> Optional[types.ModuleType]:
    """
    With mmcv-lite (no compiled ops), a placeholder ``mmcv._ext`` whose ops raise on use, so
    that ``mmdet.models`` (whose modules load the ops at import time) imports; the placeholder
    is returned, and an op can be provided by setting it as an attribute. None when mmcv's
    compiled ops are installed (they are used).
    """
    module = sys.modules.get("mmcv._ext")
    if module is not None:
        return module if getattr(module, "is_placeholder", False) else None
    if importlib.util.find_spec("mmcv._ext") is not None:
        return None
    placeholder = types.ModuleType("mmcv._ext")
    placeholder.is_placeholder = True

    def _missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise NotImplementedError(f"mmcv compiled op {name} (mmcv-lite placeholder)")

        return op

    placeholder.__getattr__ = _missing
    sys.modules["mmcv._ext"] = placeholder
    return placeholder


def run_mmdet_worker(python: str, script: str, job) -> Tuple[Optional[object], str]:
    """
    ``python script --mmdet-worker IN OUT``: ``job`` (tensors and builtin containers) goes in
    through a ``torch.save`` file, the worker's ``torch.save`` output comes back.

    Returns:
        (output, "") or, when the worker fails, (None, the end of its stderr).
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.pt"), os.path.join(tmp, "out.pt")
        torch.save(job, src)
        cmd = [python, os.path.abspath(script), "--mmdet-worker", src, dst]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"mmdet worker failed: {proc.stderr.strip()[-800:]}"
        return torch.load(dst), ""
