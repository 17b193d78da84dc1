"""tools/setup_env.sh's torch step, with a stand-in venv interpreter whose pip always fails: the
failure names the step, and says how much disk is free when that is below what torch needs."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Stands in for the venv's python: imports of torch fail, pip fails as on a full disk, anything
# else succeeds; every call is logged.
FAKE_VENV_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_PYTHON_LOG"
case "$*" in
    *"import torch"*) exit 1 ;;
    "-m pip install"*) echo "ERROR: [Errno 28] No space left on device" >&2; exit 1 ;;
esac
exit 0
"""


def _run_setup(tmp_path, disk_gb):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_VENV_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(
        os.environ,
        VENV=str(venv),
        TORCH_DISK_GB=str(disk_gb),
        TORCH_REQUIREMENT="torch==1.0 torchvision==0.1",
        FAKE_PYTHON_LOG=str(log),
    )
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "setup_env.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, log.read_text().splitlines()


def test_torch_failure_on_a_small_disk_says_how_much_is_free(tmp_path):
    # No file system here has a million GB free, so the check must report the shortage.
    proc, calls = _run_setup(tmp_path, disk_gb=10**6)
    assert proc.returncode == 1
    assert "-m pip install torch==1.0 torchvision==0.1" in calls
    assert "warning:" in proc.stdout and "needs about 1000000 GB" in proc.stdout
    assert "[setup] FAILED at step: torch and torchvision" in proc.stderr
    assert "GB free on the file system of" in proc.stderr
    assert str(tmp_path / "venv") in proc.stderr
    # Nothing after the failed step ran: no detectron2 install, no editable install.
    assert not any("install_detectron2" in c or "-e " in c for c in calls)


def test_torch_failure_with_room_to_spare_names_the_index(tmp_path):
    proc, _ = _run_setup(tmp_path, disk_gb=0)
    assert proc.returncode == 1
    assert "warning:" not in proc.stdout
    assert "could not install 'torch==1.0 torchvision==0.1'" in proc.stderr
    assert "set TORCH_REQUIREMENT to versions your package index has" in proc.stderr
    assert "GB free" not in proc.stderr


# The lines of pb1-detectron2 0.6's setup.py that the pure-Python fallback rewrites.
SDIST_SETUP_PY = """from setuptools import find_packages, setup
setup(
    name="pb1-detectron2",
    packages=find_packages(exclude=("configs", "tests*")) + list(PROJECTS.keys()),
    install_requires=[
        "Pillow>=7.1",
        "yacs>=0.1.8",
    ],
    ext_modules=get_extensions(),
    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},
)
"""


def test_fallback_build_installs_no_top_level_tools_package(tmp_path):
    import importlib.util

    from setuptools import find_packages

    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    (tmp_path / "setup.py").write_text(SDIST_SETUP_PY)
    install.patch_setup_py(str(tmp_path))
    text = (tmp_path / "setup.py").read_text()
    assert 'name="detectron2"' in text and "ext_modules=[]," in text
    # cmdclass gone; Pillow pinned below 10 (detectron2 0.6 uses Image.LINEAR).
    assert "cmdclass" not in text and "'Pillow>=7.1,<10'" in text and '"Pillow>=7.1"' not in text

    # The source tree's layout: detectron2 and its scripts' folder, both regular packages.
    for package in ("detectron2", "detectron2/layers", "tools", "configs", "tests"):
        (tmp_path / "tree" / package).mkdir(parents=True)
        (tmp_path / "tree" / package / "__init__.py").write_text("")
    exclude = eval(text.split("find_packages(exclude=")[1].split(")")[0] + ")")
    assert sorted(find_packages(str(tmp_path / "tree"), exclude=exclude)) == [
        "detectron2",
        "detectron2.layers",
    ]
