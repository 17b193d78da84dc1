#!/usr/bin/env python
"""
A folder of wheels that installs atss_d2's dependencies (detectron2 included) on a machine that
has Python with torch and torchvision but no package index, e.g. an offline GPU server:

    python tools/make_wheelhouse.py --python-version 3.12 --out .devdeps/wheels
    python tools/make_wheelhouse.py --python-version 3.12 --out .devdeps/wheels --mmdet

and there, from the repository root:

    python3 -m pip install --no-index --no-deps --target /tmp/site .devdeps/wheels/*.whl
    PYTHONPATH=/tmp/site:. python3 train_net.py ...

(``tools/gpu_benchmarks.sh`` does both and runs every GPU measurement.)

What goes in, for the target interpreter (``--python-version``, manylinux x86-64):
- detectron2 0.6 as the pure-Python wheel ``tools/install_detectron2.py --wheel-dir`` builds
  (any Python 3);
- its and atss_d2's dependencies that a PyTorch image usually lacks, at the versions installed
  in the running interpreter (the ones this project is tested with): wheels from the package
  index where it has them, wheels built here from the source archives of the pure-Python ones
  (fvcore, antlr4-python3-runtime) where it has none;
- ``--mmdet``: mmdetection 3.3.0, mmengine 0.10.7 and mmcv-lite 2.1.0 with what they import,
  for ``tools/benchmark_matcher.py``, ``tools/check_mmdet_parity.py`` and
  ``tools/benchmark_mmdet.py``.

torch, torchvision, numpy, Pillow, OpenCV, matplotlib, SciPy, tqdm, PyYAML, tensorboard and
ONNX Runtime are expected on the target (``--also`` adds more). Pillow: detectron2 0.6 names
``Image.LINEAR`` (Pillow < 10), and Pillow 9 has no wheel for Python 3.12; on such a target
``tools/gpu_benchmarks.sh`` aliases it to ``Image.BILINEAR`` (what it was in Pillow 9).
"""

import argparse
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Installed here, absent from a typical PyTorch image; pinned to the running interpreter's.
BINARY = [
    "pycocotools",
    "iopath",
    "yacs",
    "termcolor",
    "omegaconf",
    "hydra-core",
    "portalocker",
    "tabulate",
    "cloudpickle",
    "setuptools",  # < 81: detectron2 0.6 imports pkg_resources
]
# Published as source archives only (pure Python): built into wheels here.
SOURCE_ONLY = ["fvcore", "antlr4-python3-runtime"]
MMDET = {
    "mmdet": "3.3.0",
    "mmengine": "0.10.7",
    "mmcv-lite": "2.1.0",
    "addict": None,
    "yapf": None,
    "platformdirs": None,
    "terminaltables": None,
    "shapely": None,
}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def installed_version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned(name: str, version=None) -> str:
    version = version or installed_version(name)
    return f"{name}=={version}" if version else name


def pip(*args: str, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("[wheelhouse]", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(
            f"[wheelhouse] FAILED: {what}; pip's message is above. A package missing for "
            "this --python-version can be left out with --skip NAME and carried another way."
        )


def download(requirements: List[str], out: str, python_version: str) -> None:
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip(
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platform_args,
        "-d",
        out,
        *requirements,
        what=f"download wheels for Python {python_version}: {' '.join(requirements)}",
    )


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def requirements_of(wheel: str) -> List[str]:
    """The distribution names a wheel requires (extras left out)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [
        re.match(r"[A-Za-z0-9._-]+", line.split(":", 1)[1].strip()).group(0)
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def check_wheelhouse(folder: str):
    """(the wheels in ``folder``, the distributions they require that it does not hold, sorted).
    Exits when a distribution is there in several versions (``pip --no-deps`` would install
    all of them, the last one winning)."""
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    names = {}
    for wheel in wheels:
        names.setdefault(_normal(os.path.basename(wheel).split("-")[0]), []).append(wheel)
    twice = sorted(n for n, w in names.items() if len(w) > 1)
    if twice:
        raise SystemExit(
            f"[wheelhouse] {folder} holds several versions of {twice}; "
            "pip --no-deps would install them all: remove the old ones"
        )
    needed = {r for wheel in wheels for r in requirements_of(wheel) if _normal(r) not in names}
    return wheels, sorted(needed, key=str.lower)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--python-version", default="3.12", help="the target's Python, e.g. 3.12")
    p.add_argument("--out", default=os.path.join(ROOT, ".devdeps", "wheels"))
    p.add_argument("--mmdet", action="store_true", help="also mmdetection 3.3 for the comparisons")
    p.add_argument("--also", nargs="*", default=[], help="more requirements to download")
    p.add_argument("--skip", nargs="*", default=[], help="distributions to leave out")
    args = p.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    skip = {s.lower() for s in args.skip}
    binary = [pinned(n) for n in BINARY if n not in skip] + args.also
    if args.mmdet:
        binary += [pinned(n, v) if v else n for n, v in MMDET.items() if n not in skip]
    download(binary, args.out, args.python_version)
    source = [pinned(n) for n in SOURCE_ONLY if n not in skip]
    if source:
        pip(
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            args.out,
            *source,
            what="build wheels of " + " ".join(source),
        )
    if "detectron2" not in skip:
        script = os.path.join(ROOT, "tools", "install_detectron2.py")
        cmd = [sys.executable, script, "--wheel-dir", args.out]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit("[wheelhouse] FAILED: build the detectron2 wheel (message above)")

    wheels, needed = check_wheelhouse(args.out)
    size = sum(os.path.getsize(w) for w in wheels)
    print(f"[wheelhouse] {len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.out}:")
    for wheel in wheels:
        print("   ", os.path.basename(wheel))
    print("[wheelhouse] expected on the target:", ", ".join(needed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
