#!/usr/bin/env python
"""
Install detectron2 into the running interpreter's environment, for machines that cannot reach
detectron2's source repository.

Order of preference:
1. detectron2 already importable: keep it (e.g. a user's source build with compiled ops).
2. ``$DETECTRON2_SOURCE`` names a source checkout or archive: ``pip install`` it.
3. Otherwise build a pure-Python detectron2 0.6 from the registry sdist ``pb1-detectron2==0.6``
   (sha256-verified), distribution name set back to ``detectron2``, no compiled extension, and a
   placeholder ``detectron2._C`` whose ops raise a clear error when used.

Every failure exits non-zero with a message naming the step and what to do.
"""

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Requirements of the pure-Python 0.6 build. The upper bounds are needed only by 0.6:
# it uses Image.LINEAR (removed in Pillow 10), pkg_resources (removed in setuptools 81) and
# iopath's pre-0.1.10 API.
FALLBACK_REQUIREMENTS = [
    "Pillow>=7.1,<10",
    "setuptools>=77,<81",
    "iopath>=0.1.7,<0.1.10",
    "fvcore>=0.1.5,<0.1.6",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

PLACEHOLDER_C = '''"""
Placeholder for detectron2's compiled ops (``detectron2._C``).

This detectron2 was installed by atss_d2 as pure Python, without its C++/CUDA extension. The
ATSS path needs none of the compiled ops (NMS comes from torchvision, COCO evaluation uses
pycocotools). Any compiled op raises an error that says so. Install detectron2 from source
(set DETECTRON2_SOURCE before ``make setup``) to get them.
"""

ATSS_D2_PLACEHOLDER = True


class MissingCompiledOpError(AttributeError):
    """A compiled detectron2 op was used, but detectron2 was installed without them."""


def get_compiler_version():
    # Informational only (detectron2.utils.collect_env reports it); not an op.
    return "none: detectron2 was installed without its compiled ops"


def get_cuda_version():
    return "none: detectron2 was installed without its compiled ops"


def has_cuda():
    return False


# detectron2's fast COCO evaluation ("use_fast_impl"); pycocotools computes the same AP.
_COCOEVAL_OPS = ("COCOevalAccumulate", "COCOevalEvaluateImages", "InstanceAnnotation")


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    instead = ""
    if name in _COCOEVAL_OPS:
        instead = (
            "; or evaluate with COCOEvaluator(..., use_fast_impl=False) or "
            "atss_d2.evaluation.ATSSCOCOEvaluator, which use pycocotools"
        )
    raise MissingCompiledOpError(
        f"detectron2 was installed without its compiled ops; detectron2._C.{name} needs a "
        "source build of detectron2 (set DETECTRON2_SOURCE to a detectron2 checkout and run "
        f"'make setup' again){instead}"
    )
'''


def fail(step, message):
    print(f"[install_detectron2] FAILED at step '{step}': {message}", file=sys.stderr)
    sys.exit(1)


def pip(*args, step):
    cmd = [sys.executable, "-m", "pip", *args]
    print("[install_detectron2] $ " + " ".join(cmd), flush=True)
    if subprocess.call(cmd) != 0:
        fail(
            step,
            "pip returned an error (see its output above). Check network access to the "
            "package registry, then run 'make setup' again.",
        )


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def patch_setup_py(src_dir):
    """Rewrite the sdist's setup.py into a pure-Python ``detectron2`` distribution."""
    path = os.path.join(src_dir, "setup.py")
    with open(path) as f:
        text = f.read()
    replacements = [
        (r'name="pb1-detectron2"', 'name="detectron2"'),
        (r"ext_modules=get_extensions\(\),", "ext_modules=[],"),
        (r'cmdclass=\{"build_ext": torch\.utils\.cpp_extension\.BuildExtension\},', ""),
        # The sdist would also install its example scripts as a top-level ``tools`` package,
        # which shadows any ``tools/`` folder of the user's own (a regular package wins over a
        # namespace one wherever it sits on sys.path).
        (r'exclude=\("configs", "tests\*"\)', 'exclude=("configs", "tests*", "tools", "tools.*")'),
    ]
    for pattern, new in replacements:
        text, n = re.subn(pattern, new, text)
        if n != 1:
            fail(
                "patch setup.py",
                f"expected one match of {pattern!r} in {path}, found {n}; "
                "the sdist is not the one this script knows",
            )
    # Replace the dependency list by the pins the pure-Python 0.6 build needs.
    start = text.index("install_requires=[")
    end = text.index("],", start) + 2
    text = text[:start] + f"install_requires={FALLBACK_REQUIREMENTS!r}," + text[end:]
    with open(path, "w") as f:
        f.write(text)


def build_fallback(workdir, wheel_dir=None):
    """Download, verify and prepare the sdist in ``workdir``; install it with its dependencies,
    or with ``wheel_dir``, only write its wheel (pure Python: any Python 3) there."""
    step = "download pb1-detectron2 sdist"
    pip(
        "download",
        "--no-deps",
        "--no-build-isolation",
        "--no-binary",
        ":all:",
        "-d",
        workdir,
        f"{SDIST_NAME}=={SDIST_VERSION}",
        step=step,
    )
    archive = os.path.join(workdir, f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz")
    if not os.path.isfile(archive):
        fail(step, f"{archive} was not downloaded")

    step = "verify sha256"
    digest = sha256_of(archive)
    if digest != SDIST_SHA256:
        fail(
            step, f"{archive} has sha256 {digest}, expected {SDIST_SHA256}; refusing to install it"
        )

    step = "unpack sdist"
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    src = os.path.join(workdir, f"{SDIST_NAME}-{SDIST_VERSION}")
    if not os.path.isfile(os.path.join(src, "detectron2", "__init__.py")):
        fail(step, f"{src} holds no detectron2 package")

    step = "prepare pure-Python build"
    patch_setup_py(src)
    # setup.py packages the model zoo from configs/ at the source root.
    zoo = os.path.join(src, "detectron2", "model_zoo", "configs")
    configs = os.path.join(src, "configs")
    if os.path.isdir(zoo) and not os.path.exists(configs):
        shutil.copytree(zoo, configs)
    shutil.rmtree(os.path.join(src, "pb1_detectron2.egg-info"), ignore_errors=True)
    with open(os.path.join(src, "detectron2", "_C.py"), "w") as f:
        f.write(PLACEHOLDER_C)

    if wheel_dir is not None:
        step = "build the pure-Python detectron2 wheel"
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, src, step=step)
        return
    step = "install detectron2 dependencies"
    pip("install", *FALLBACK_REQUIREMENTS, step=step)
    step = "install pure-Python detectron2"
    pip("install", "--no-build-isolation", "--no-deps", src, step=step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--force-fallback",
        action="store_true",
        help="build the pure-Python fallback even if detectron2 is importable",
    )
    parser.add_argument(
        "--wheel-dir",
        default=None,
        help="only build the pure-Python fallback's wheel into this folder (nothing installed; "
        "for machines without a package index, see tools/make_wheelhouse.py)",
    )
    args = parser.parse_args()

    if importlib.util.find_spec("torch") is None:
        fail("check torch", "torch must be installed first (detectron2's setup.py imports it)")
    if args.wheel_dir:
        os.makedirs(args.wheel_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="atss_d2-detectron2-") as workdir:
            build_fallback(workdir, os.path.abspath(args.wheel_dir))
        print(
            f"[install_detectron2] wrote the pure-Python detectron2 0.6 wheel to {args.wheel_dir}"
        )
        return
    if not args.force_fallback and importlib.util.find_spec("detectron2") is not None:
        print("[install_detectron2] detectron2 is already importable; keeping it")
        return
    source = os.environ.get("DETECTRON2_SOURCE")
    if source and not args.force_fallback:
        if not os.path.exists(source):
            fail("install DETECTRON2_SOURCE", f"DETECTRON2_SOURCE={source} does not exist")
        pip("install", "--no-build-isolation", source, step="install DETECTRON2_SOURCE")
        return
    with tempfile.TemporaryDirectory(prefix="atss_d2-detectron2-") as workdir:
        build_fallback(workdir)
    print("[install_detectron2] installed pure-Python detectron2 0.6 (no compiled ops)")


if __name__ == "__main__":
    main()
