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
    config_convention,
    config_convention_overrides,
    convention_overrides,
    convert_state_dict,
    default_config,
    describe_convention,
    extract_state_dict,
    infer_model_arch,
    input_convention,
    mmdet_class_names,
    save_detectron2_checkpoint,
    verify_against,
)
from .detection_checkpoint import (
    LoadReport,
    SafeDetectionCheckpointer,
    WeightsNotFoundError,
    model_input_convention,
)
from .safe_load import (
    CheckpointReadError,
    FrameworkRecord,
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
    "FrameworkRecord",
    "ModelArch",
    "SafeDetectionCheckpointer",
    "UnsafeCheckpointError",
    "check_file_format",
    "compare_cell_anchors",
    "config_convention",
    "config_convention_overrides",
    "convention_overrides",
    "convert_state_dict",
    "default_config",
    "describe_convention",
    "extract_state_dict",
    "infer_model_arch",
    "input_convention",
    "load_checkpoint_file",
    "mmdet_class_names",
    "model_input_convention",
    "safe_pickle_load",
    "safe_torch_load",
    "save_detectron2_checkpoint",
    "verify_against",
]
