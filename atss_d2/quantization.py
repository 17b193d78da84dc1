"""
Static int8 quantization of an exported ONNX model with ONNX Runtime's quantizer.

:func:`quantize_onnx` calibrates the activation ranges on images (MinMax), then writes a QDQ model
(QuantizeLinear / DequantizeLinear pairs, which ONNX Runtime's CPU provider runs as integer
convolutions): activations uint8, weights int8 per output channel, as ONNX Runtime recommends for
x86 CPUs with VNNI. Only the convolutions are quantized (the backbone, the FPN and the head
towers, where the time goes); GroupNorm, the head's output convolutions (logits, box regression,
centerness: :data:`FLOAT_OUTPUT_CONVS`) and the post-processing stay float32.

:class:`DatasetCalibrationReader` feeds images of a registered dataset, read and resized exactly
as the test loader does; :class:`ArrayCalibrationReader` feeds arrays given directly.
"""

import contextlib
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

__all__ = [
    "FLOAT_OUTPUT_CONVS",
    "ArrayCalibrationReader",
    "DatasetCalibrationReader",
    "calibration_images",
    "quantize_onnx",
]

logger = logging.getLogger(__name__)

# The head's output convolutions, left in float32: their outputs are the logits and box deltas
# that the scores and boxes are computed from.
FLOAT_OUTPUT_CONVS = ("cls_score", "bbox_pred", "centerness")


class ArrayCalibrationReader:
    """
    An ONNX Runtime calibration data reader (its ``CalibrationDataReader`` protocol: ``get_next``
    returns one input dict, then None) over float32 (3, H, W) images, fed to ``input_name``.
    """

    def __init__(self, images: Iterable[np.ndarray], input_name: str = "image"):
        self._images = iter(images)
        self.input_name = input_name
        self.count = 0  # images given so far

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        image = next(self._images, None)
        if image is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(image, dtype=np.float32)}


def calibration_images(cfg, dataset_name: str, num_images: int) -> List[np.ndarray]:
    """
    ``num_images`` images of the registered dataset ``dataset_name`` (evenly spaced over it), as
    the exported model takes them: read in ``INPUT.FORMAT``, resized by the test loader's
    ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, float32 (3, H, W).
    """
    from detectron2.data import DatasetCatalog

    from .data.mapper import ATSSDatasetMapper
    from .engine.config import check_datasets_registered

    if num_images < 1:
        raise ValueError(f"--calib-images must be at least 1, got {num_images}")
    check_datasets_registered([dataset_name], "--calib-dataset")
    records = DatasetCatalog.get(dataset_name)
    if not records:
        raise ValueError(f"--calib-dataset {dataset_name!r} has no images")
    picks = np.linspace(0, len(records) - 1, min(num_images, len(records))).round().astype(int)
    mapper = ATSSDatasetMapper(cfg, is_train=False)
    return [mapper(records[i])["image"].numpy().astype(np.float32) for i in picks]


class DatasetCalibrationReader(ArrayCalibrationReader):
    """:class:`ArrayCalibrationReader` over :func:`calibration_images`."""

    def __init__(self, cfg, dataset_name: str, num_images: int, input_name: str = "image"):
        super().__init__(calibration_images(cfg, dataset_name, num_images), input_name=input_name)


def quantize_onnx(
    float_path: str,
    output_path: str,
    calibration_reader,
    *,
    per_channel: bool = True,
    float_convs: Sequence[str] = FLOAT_OUTPUT_CONVS,
    op_types: Sequence[str] = ("Conv",),
) -> List[str]:
    """
    Quantize the float32 ONNX model at ``float_path`` to ``output_path`` (QDQ, uint8 activations
    calibrated by MinMax on ``calibration_reader``'s images, int8 weights per output channel if
    ``per_channel``).

    Args:
        float_convs: convs whose ONNX node name contains one of these (module names, e.g.
            "cls_score") stay float32.
        op_types: ONNX op types to quantize.

    Returns:
        the names of the nodes kept in float32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static

    if not os.path.isfile(float_path):
        raise FileNotFoundError(f"No ONNX model at {float_path}")
    model = onnx.load(float_path)
    excluded = [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and any(f"/{name}" in node.name for name in float_convs)
    ]
    del model
    # ONNX Runtime suggests its pre-processing (shape inference and graph optimisation) on
    # every call; the batch norms are folded at export and the session optimises at load.
    with _without_root_warning("Please consider"):
        _quantize_static(
            float_path,
            output_path,
            calibration_reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return excluded


@contextlib.contextmanager
def _without_root_warning(prefix: str):
    """Drop the root logger's records starting with ``prefix`` inside the block."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def num_quantized_nodes(path: str) -> Optional[int]:
    """Number of QuantizeLinear nodes of the ONNX model at ``path``."""
    import onnx

    return sum(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node)
