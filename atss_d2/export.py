"""
Export an ATSS model to TorchScript (``torch.jit.trace``) or ONNX, through detectron2's
:class:`TracingAdapter`, which flattens the model's ``list[dict] -> list[dict[Instances]]``
interface into tuples of tensors.

The exported model takes one float32 (3, H, W) image (any H, W; the channel order
``INPUT.FORMAT`` and 0-255 values, resized as for the PyTorch model) and returns a tuple of
tensors, the flattened ``Instances`` (names from :func:`export_torchscript` / :func:`export_onnx`,
normally ``pred_boxes`` (D, 4) XYXY, ``pred_classes`` (D,), ``scores`` (D,), ``image_size`` (2,));
:func:`instances_from_outputs` turns them back into ``Instances``. Boxes are in the input image's
coordinates: scale them to the original image as ``detector_postprocess`` does.

:func:`export_onnx` exports, by default, an export-friendly copy of the model
(:func:`atss_d2.export_layers.prepare_for_export`: batch norms folded into the convolutions, the
3x3 convolutions of 256 channels or more computed with Winograd's F(4x4, 3x3)), which gives the
same detections (up to float32 rounding) and runs faster in ONNX Runtime on the CPU.
"""

import contextlib
import importlib
import inspect
import os
import sys
import types
import warnings
from typing import Any, Dict, List, Sequence

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

__all__ = [
    "DEFAULT_OUTPUT_NAMES",
    "tracing_adapter_class",
    "build_tracing_adapter",
    "export_torchscript",
    "export_onnx",
    "output_field_names",
    "instances_from_outputs",
]


# The outputs of an exported ATSS model (the flattened Instances fields, sorted, then the size).
DEFAULT_OUTPUT_NAMES = ["pred_boxes", "pred_classes", "scores", "image_size"]


def tracing_adapter_class():
    """
    Return detectron2's ``TracingAdapter`` class.

    detectron2 0.6's ``detectron2/export/__init__.py`` imports caffe2 unconditionally (later
    versions made it optional), and torch 2 ships no caffe2. In that case, register the package
    without its ``__init__`` and import the caffe2-free submodules it would have exported, as
    detectron2's newer ``__init__`` does.
    """
    try:
        from detectron2.export import TracingAdapter

        return TracingAdapter
    except ImportError as e:
        if "caffe2" not in str(e):
            raise
    import detectron2

    package = types.ModuleType("detectron2.export")
    package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    sys.modules["detectron2.export"] = package
    flatten = importlib.import_module("detectron2.export.flatten")
    torchscript = importlib.import_module("detectron2.export.torchscript")
    package.TracingAdapter = flatten.TracingAdapter
    package.scripting_with_instances = torchscript.scripting_with_instances
    package.dump_torchscript_IR = torchscript.dump_torchscript_IR
    return flatten.TracingAdapter


def build_tracing_adapter(model: nn.Module, image: Tensor) -> nn.Module:
    """
    Args:
        model: an ATSS model (any detectron2 model whose ``forward`` takes ``[{"image": ...}]``).
        image: Tensor (3, H, W), the sample used for tracing.

    Returns:
        a ``TracingAdapter``: call it with ``(image,)``; ``.flattened_inputs`` is ``(image,)``.
    """
    model.eval()
    # No "height"/"width": outputs stay in the input image's coordinates, so nothing about the
    # sample's size is baked into the trace.
    adapter = tracing_adapter_class()(model, [{"image": image}])
    # A new module is in training mode; torch.onnx.export restores that mode on exit, which
    # would put the wrapped model into training mode too.
    return adapter.eval()


def export_torchscript(model: nn.Module, image: Tensor, path: str) -> List[str]:
    """
    Trace ``model`` on ``image`` (3, H, W) with ``torch.jit.trace`` and save the TorchScript
    module to ``path``.

    Returns:
        the names of the traced module's outputs (see :func:`output_field_names`).
    """
    adapter = build_tracing_adapter(model, image)
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        outputs = adapter(*adapter.flattened_inputs)
    traced.save(path)
    return output_field_names(adapter, len(outputs))


def export_onnx(
    model: nn.Module,
    image: Tensor,
    path: str,
    opset_version: int = 17,
    *,
    optimize: bool = True,
    winograd: bool = True,
) -> List[str]:
    """
    Export ``model`` traced on ``image`` (3, H, W) to ONNX at ``path``, with dynamic H and W and
    dynamic numbers of detections. Uses the TorchScript-based exporter (``dynamo=False``).

    Args:
        optimize: export :func:`~atss_d2.export_layers.prepare_for_export`'s copy of ``model``
            (batch norms folded; with ``winograd``, the wide 3x3 convs as Winograd products)
            instead of ``model`` itself. ``model`` is not modified.
        winograd: see ``optimize``. A model to be quantized is exported without (its convs
            become integer convolutions).

    Returns:
        the ONNX graph's output names: the flattened ``Instances`` fields, e.g.
        ``["pred_boxes", "pred_classes", "scores", "image_size"]``.
    """
    from .export_layers import prepare_for_export
    from .modeling.deform import DeformConv

    if any(isinstance(m, DeformConv) for m in model.modules()):
        # torchvision registers no ONNX symbolic for deform_conv2d.
        raise ValueError(
            "ONNX export does not support deformable convolutions (MODEL.ATSS.DCN_IN_TOWER, "
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE): export this model with format 'torchscript'"
        )
    if optimize:
        model = prepare_for_export(model, winograd=winograd)
    adapter = build_tracing_adapter(model, image)
    with torch.no_grad():
        outputs = adapter(*adapter.flattened_inputs)
    output_names = output_field_names(adapter, len(outputs))
    dynamic_axes: Dict[str, Dict[int, str]] = {"image": {1: "height", 2: "width"}}
    for name, out in zip(output_names, outputs):
        if out.dim() > 0:
            dynamic_axes[name] = {0: "detections"}
    kwargs: Dict[str, Any] = {}
    if "dynamo" in _export_parameters():
        kwargs["dynamo"] = False
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            path,
            input_names=["image"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset_version,
            do_constant_folding=True,
            **kwargs,
        )
    _inline_shared_initializers(path)
    return output_names


@contextlib.contextmanager
def _quiet_tracer():
    """
    Without the tracer's warnings about detectron2's and ATSS's Python-side checks (asserts on
    shapes, ``len(boxes)``, ``h, w = image_size``, ``numel() == 0``): each is a constant of the
    model, not of the image, so the trace serves every image size, as ``tests/test_export.py``
    checks on images larger and smaller than the trace's. Also without the ONNX exporter's
    note that advanced indexing with negative indices is exported wrongly: ATSS indexes with
    ``nonzero`` / ``topk`` results, which are never negative.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message="Exporting aten::index operator of advanced indexing"
        )
        yield


def _inline_shared_initializers(path: str) -> None:
    """
    The exporter stores equal parameters once and reads the copies through Identity nodes
    (e.g. the zero biases of a randomly initialised model). A conv whose weight or bias is not
    an initializer is left in float32 by ONNX Runtime's quantizer: give every such Identity's
    output its own initializer, in place.
    """
    import onnx

    proto = onnx.load(path)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.input[0] in initializers
            and node.output[0] not in outputs
        ):
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    if len(kept) == len(graph.node):
        return
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(proto, path)


def output_field_names(adapter: nn.Module, num_outputs: int) -> List[str]:
    """
    Names of a traced single-image model's flat outputs, read from the adapter's output schema
    (``[{"instances": Instances}]`` flattens to the fields in sorted order, then image_size);
    ``output0``, ``output1``, ... if the schema has another shape.
    """
    schema = adapter.outputs_schema
    names = None
    # ListSchema (one image) -> DictSchema {"instances"} -> InstancesSchema (field names).
    if len(getattr(schema, "schemas", ())) == 1:
        per_image = schema.schemas[0]
        if getattr(per_image, "keys", None) == ["instances"]:
            fields = list(getattr(per_image.schemas[0], "keys", []))
            names = fields + ["image_size"]
    if names is None or len(names) != num_outputs:
        names = [f"output{i}" for i in range(num_outputs)]
    return names


def _export_parameters() -> Sequence[str]:
    return list(inspect.signature(torch.onnx.export).parameters)


def instances_from_outputs(names: Sequence[str], outputs: Sequence[Any]) -> Instances:
    """
    Rebuild ``Instances`` from an exported model's outputs (tensors or numpy arrays) and their
    names as returned by :func:`export_torchscript` / :func:`export_onnx`.
    """
    fields = {name: torch.as_tensor(out) for name, out in zip(names, outputs)}
    image_size = tuple(int(x) for x in fields.pop("image_size"))
    result = Instances(image_size)
    for name, value in fields.items():
        result.set(name, Boxes(value) if name.endswith("boxes") else value)
    return result
