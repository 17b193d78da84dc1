"""
Running an exported model (ONNX through ONNX Runtime, TorchScript through ``torch.jit.load``)
like the PyTorch model, comparing its detections with PyTorch's, and evaluating it on a
registered dataset.

:class:`ExportedModel` takes what the test loader gives (``[{"image": (C, H, W), "height",
"width"}]``, the image already resized) and returns ``[{"instances": Instances}]`` with the boxes
scaled to ``height`` x ``width`` as ``detector_postprocess`` does for the PyTorch model, so that
:func:`evaluate` runs either through the same loader and evaluator (``ATSSTrainer``'s: the one
each dataset's ``evaluator_type`` asks for).
"""

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor

from .engine.config import check_datasets_registered
from .export import DEFAULT_OUTPUT_NAMES, instances_from_outputs

__all__ = [
    "ExportedModel",
    "ap_lines",
    "box_ap",
    "compare_detections",
    "evaluate",
    "match_detections",
    "ort_session",
]

logger = logging.getLogger(__name__)

# Exact agreement of an exported float32 model with PyTorch (float32 rounding, Winograd's
# F(4x4, 3x3) included): boxes in pixels, scores.
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4


def ort_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session on ``path`` with every graph optimisation
    (``ORT_ENABLE_ALL``: constant folding, conv fusions, the NCHWc layout), ``threads``
    intra-op threads (None: ONNX Runtime's default, one per physical core) and no inter-op
    parallelism."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class ExportedModel:
    """
    An exported ATSS model: ``.onnx`` (run by ONNX Runtime on the CPU, float32 or int8) or
    TorchScript (``.ts`` / ``.pt``). The output names of a TorchScript file come from the
    ``outputs.json`` beside it (written by ``tools/export_model.py``), else
    :data:`~atss_d2.export.DEFAULT_OUTPUT_NAMES`.
    """

    def __init__(self, path: str, *, threads: Optional[int] = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No exported model at {path}")
        self.path = path
        if path.endswith(".onnx"):
            self.format = "onnx"
            self._session = ort_session(path, threads)
            self.output_names = [o.name for o in self._session.get_outputs()]
            self.input_name = self._session.get_inputs()[0].name
        elif path.endswith((".ts", ".pt")):
            self.format = "torchscript"
            if threads:
                torch.set_num_threads(int(threads))
            self._module = torch.jit.load(path, map_location="cpu").eval()
            self.output_names = _torchscript_output_names(path)
        else:
            raise ValueError(f"{path}: unknown exported format (expected a .onnx, .ts or .pt file)")

    def run(self, image: Tensor) -> Instances:
        """
        Args:
            image: (3, H, W), the resized image in ``INPUT.FORMAT`` (any dtype; 0-255).

        Returns:
            Instances of the (H, W) image: pred_boxes, scores, pred_classes.
        """
        image = torch.as_tensor(image).float().cpu()
        if self.format == "onnx":
            outputs = self._session.run(None, {self.input_name: image.numpy()})
        else:
            # No profiling-executor re-optimization for every new image size.
            with torch.no_grad(), torch.jit.optimized_execution(False):
                outputs = self._module(image)
        return instances_from_outputs(self.output_names, outputs)

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Like a detectron2 model in eval mode: boxes scaled to each input's "height" and
        "width" (default: the image's own size)."""
        results = []
        for item in batched_inputs:
            instances = self.run(item["image"])
            height = item.get("height", instances.image_size[0])
            width = item.get("width", instances.image_size[1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


def _torchscript_output_names(path: str) -> List[str]:
    names_file = os.path.join(os.path.dirname(os.path.abspath(path)), "outputs.json")
    if os.path.isfile(names_file):
        from .utils import read_json

        names = read_json(names_file, "exported model outputs").get("outputs")
        if names:
            return list(names)
    return list(DEFAULT_OUTPUT_NAMES)


def compare_detections(expected: Instances, actual: Instances):
    """
    Whether ``actual`` (an exported float32 model's detections) are ``expected`` (PyTorch's):
    same number, same image size, same classes, boxes within :data:`BOX_TOLERANCE` pixels and
    scores within :data:`SCORE_TOLERANCE`, in the same order.

    Returns:
        (bool, a one-line verdict).
    """
    if len(expected) != len(actual) or tuple(actual.image_size) != tuple(expected.image_size):
        return False, f"MISMATCH: {len(actual)} detections exported, {len(expected)} in PyTorch"
    if len(expected) == 0:
        return True, "matches PyTorch (no detections on the sample)"
    box_diff = (actual.pred_boxes.tensor - expected.pred_boxes.tensor).abs().max().item()
    score_diff = (actual.scores - expected.scores).abs().max().item()
    same_classes = torch.equal(actual.pred_classes.long(), expected.pred_classes.long())
    if box_diff > BOX_TOLERANCE or score_diff > SCORE_TOLERANCE or not same_classes:
        classes = "" if same_classes else ", classes differ"
        return False, (
            f"MISMATCH: max box diff {box_diff:.3g}, max score diff {score_diff:.3g}{classes}"
        )
    return True, (
        f"matches PyTorch: {len(expected)} detections, max box diff {box_diff:.3g}, "
        f"max score diff {score_diff:.3g}"
    )


def match_detections(
    expected: Instances, actual: Instances, iou_threshold: float = 0.5
) -> Dict[str, float]:
    """
    How closely ``actual`` (e.g. an int8 model's detections) follows ``expected``: greedily, in
    decreasing ``expected`` score, each expected detection takes the unmatched ``actual`` one of
    the same class with the highest IoU, if at least ``iou_threshold``.

    Returns:
        dict with "matched" (fraction of ``expected`` matched; 1.0 when both are empty),
        "mean_iou" and "mean_score_diff" over the matches, and the two counts.
    """
    out = {"expected": len(expected), "actual": len(actual)}
    if len(expected) == 0:
        out.update(matched=1.0 if len(actual) == 0 else 0.0, mean_iou=1.0, mean_score_diff=0.0)
        return out
    order = torch.argsort(expected.scores, descending=True)
    iou = pairwise_iou(Boxes(expected.pred_boxes.tensor[order]), actual.pred_boxes)
    same = expected.pred_classes[order].long()[:, None] == actual.pred_classes.long()[None, :]
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    taken = torch.zeros(len(actual), dtype=torch.bool)
    ious, score_diffs = [], []
    for i in range(len(expected)):
        row = torch.where(taken, torch.full_like(iou[i], -1.0), iou[i])
        if len(row) == 0:
            break
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            ious.append(float(row[j]))
            score_diffs.append(abs(float(expected.scores[order[i]] - actual.scores[j])))
    out["matched"] = len(ious) / len(expected)
    out["mean_iou"] = sum(ious) / len(ious) if ious else 0.0
    out["mean_score_diff"] = sum(score_diffs) / len(score_diffs) if score_diffs else 0.0
    return out


def evaluate(
    model,
    cfg,
    dataset_name: str,
    *,
    output_dir: Optional[str] = None,
    desc: Optional[str] = None,
) -> "OrderedDict[str, Dict[str, float]]":
    """
    Evaluate ``model`` (a detectron2 model in eval mode or an :class:`ExportedModel`) on the
    registered dataset ``dataset_name``, through ``ATSSTrainer``'s test loader (the images read
    in ``INPUT.FORMAT`` and resized by ``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and evaluator
    (COCO AP for COCO-format datasets), with a progress bar.

    Returns:
        the evaluator's results, e.g. ``{"bbox": {"AP": ..., "AP50": ..., ...}}``.
    """
    from tqdm import tqdm

    from .engine.trainer import ATSSTrainer

    check_datasets_registered([dataset_name], "the evaluated dataset")
    loader = ATSSTrainer.build_test_loader(cfg, dataset_name)
    evaluator = ATSSTrainer.build_evaluator(cfg, dataset_name, output_dir)
    evaluator.reset()
    with torch.no_grad():
        for inputs in tqdm(loader, desc=desc or f"evaluating on {dataset_name}"):
            evaluator.process(inputs, model(inputs))
    results = evaluator.evaluate()
    return results if results is not None else OrderedDict()


def box_ap(results: Dict) -> float:
    """The box AP of :func:`evaluate`'s results (NaN when there is none)."""
    return float(results.get("bbox", {}).get("AP", float("nan")))


def ap_lines(results: Dict[str, Dict], reference: str = "pytorch") -> Sequence[str]:
    """One line per evaluated model: its box AP and the difference to ``reference``'s."""
    lines = []
    ref = box_ap(results[reference]) if reference in results else float("nan")
    for name, res in results.items():
        ap = box_ap(res)
        diff = "" if name == reference else f"  ({ap - ref:+.2f} vs {reference})"
        lines.append(f"  {name:<14} COCO box AP {ap:6.2f}{diff}")
    return lines
