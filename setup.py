#!/usr/bin/env python
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """Also copy the repository's configs/ into the built package as atss_d2/configs, so that
    atss_d2.model_zoo finds them after a non-editable install (configs/ stays the one source,
    as detectron2's setup.py does with its model-zoo configs)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "atss_d2", "configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(
            os.path.join(ROOT, "configs"), target, ignore=shutil.ignore_patterns("__pycache__")
        )


setup(
    name="atss-d2",
    version="0.1.0",
    description="ATSS (Adaptive Training Sample Selection, CVPR 2020) as a Detectron2 extension",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=("atss_d2", "atss_d2.*")),
    cmdclass={"build_py": BuildWithConfigs},
    entry_points={
        "console_scripts": [
            "atss-train = atss_d2.train_net:cli",
            "atss-demo = atss_d2.demo_cli:cli",
        ]
    },
    python_requires=">=3.9",
    install_requires=[
        # detectron2 is not on the package registry under its own name: `make setup` installs it
        # (a source build, $DETECTRON2_SOURCE, or the pure-Python fallback) before this package.
        "detectron2>=0.6",
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "matplotlib",
        "tensorboard",
        "tqdm",
    ],
    extras_require={
        # onnx/onnxruntime: tests/test_export.py checks ONNX export against PyTorch.
        "dev": ["pytest", "ruff", "black", "isort", "onnx", "onnxruntime"],
        "export": ["onnx", "onnxruntime"],
    },
)
