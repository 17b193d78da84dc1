#!/usr/bin/env python
from setuptools import find_packages, setup

setup(
    name="atss-d2",
    version="0.1.0",
    description="ATSS (Adaptive Training Sample Selection, CVPR 2020) as a Detectron2 extension",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=("atss_d2", "atss_d2.*")),
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
