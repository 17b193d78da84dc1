"""
Checkpoint interoperability: conversion of mmdetection, authors' (maskrcnn-benchmark) and
torchvision checkpoints to atss_d2 models, and loading of checkpoint files without arbitrary
unpickling. ``tools/convert_checkpoint.py`` is the command-line front end.
"""

from .convert import (
    SOURCES,
    ConversionError,
    ConversionReport,
    ModelArch,
    compare_cell_anchors,
    convert_state_dict,
    default_config,
    extract_state_dict,
    infer_model_arch,
    save_detectron2_checkpoint,
    verify_against,
)
from .detection_checkpoint import (
    LoadReport,
    SafeDetectionCheckpointer,
    WeightsNotFoundError,
)
from .safe_load import (
    CheckpointReadError,
    UnsafeCheckpointError,
    check_file_format,
    load_checkpoint_file,
    safe_pickle_load,
    safe_torch_load,
)

__all__ = [
    "SOURCES",
    "CheckpointReadError",
    "LoadReport",
    "WeightsNotFoundError",
    "ConversionError",
    "ConversionReport",
    "ModelArch",
    "SafeDetectionCheckpointer",
    "UnsafeCheckpointError",
    "check_file_format",
    "compare_cell_anchors",
    "convert_state_dict",
    "default_config",
    "extract_state_dict",
    "infer_model_arch",
    "load_checkpoint_file",
    "safe_pickle_load",
    "safe_torch_load",
    "save_detectron2_checkpoint",
    "verify_against",
]
