#!/usr/bin/env python
"""
Export an ATSS model to TorchScript or ONNX (traced through detectron2's ``TracingAdapter``).

    python tools/export_model.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml \\
        --format onnx --output exported/ --sample-image input.jpg MODEL.WEIGHTS model_final.pth

Writes ``model.onnx`` or ``model.ts`` and ``outputs.json`` (the output names, the input's channel
order and resize, the class names) into ``--output``, then runs the exported model on the sample
and checks its detections against PyTorch's. The exported model takes one float32 (3, H, W)
image, already resized (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and in INPUT.FORMAT's channel
order, and returns boxes in that image's coordinates. Without ``--sample-image``, a random image
of the test size is used for tracing.

``--quantize`` also writes ``model.int8.onnx`` (ONNX Runtime static quantization, calibrated on
``--calib-images`` images of the registered dataset ``--calib-dataset``). ``--run-eval DATASET``
evaluates the exported model(s) and the PyTorch model on a registered dataset and prints their
COCO AP.
"""

import argparse
import json
import logging
import os
import sys
import tempfile

import numpy as np
import torch

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from atss_d2.checkpoint import SafeDetectionCheckpointer
from atss_d2.config_checks import ConfigError, check_atss_config
from atss_d2.data import (
    add_dataset_arguments,
    register_datasets_from_args,
)
from atss_d2.data.mapper import UnreadableImageError, read_image_any_mode
from atss_d2.demo import UNNAMED, class_metadata, names_source
from atss_d2.engine.config import check_datasets_registered
from atss_d2.engine.predictor import check_class_names, check_weights_for_inference
from atss_d2.export import export_onnx, export_torchscript
from atss_d2.runtime import (
    ExportedModel,
    ap_lines,
    compare_detections,
    evaluate,
    match_detections,
)
from atss_d2.train_net import load_yaml_config

logger = logging.getLogger("atss_d2.export")


def setup_cfg(args):
    """The config of ``--config-file`` and ``opts``, with ``MODEL.DEVICE`` cpu: the model is
    built and traced on the CPU (the exported file runs anywhere), whatever device the config
    trains on. Errors name the file and the key (:class:`ConfigError`)."""
    if args.config_file.endswith(".py"):
        raise ConfigError(
            f"{args.config_file} is a LazyConfig; export_model.py reads YAML configs (each "
            "shipped LazyConfig has a YAML twin of the same name, e.g. "
            "configs/Shapes/atss_R_18_FPN_shapes.yaml)"
        )
    cfg = load_yaml_config(args.config_file, args.opts)
    check_atss_config(cfg)
    if cfg.MODEL.DEVICE != "cpu":
        logger.info(f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} -> 'cpu': the model is traced on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def sample_image(cfg, path):
    """The sample as the model sees it at test time: Tensor float32 (3, H, W)."""
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--sample-image not found: {path}")
        if not os.path.isfile(path):
            raise ValueError(f"--sample-image {path} is not a file")
        try:  # as training and evaluation read their images (16-bit, float, any mode)
            image = read_image_any_mode(path, cfg.INPUT.FORMAT)
        except UnreadableImageError as e:
            raise ValueError(f"--sample-image: {e}") from e
    else:
        side = cfg.INPUT.MIN_SIZE_TEST or 512  # 0: the test loader does not resize
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(side, side * 4 // 3, 3), dtype=np.uint8)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def check_arguments(args, cfg):
    """Errors naming the bad argument, before anything is built."""
    if args.quantize and args.format != "onnx":
        raise ValueError("--quantize needs --format onnx (ONNX Runtime quantization)")
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be at least 1, got {args.calib_images}")
    check_packages(args)
    if args.quantize:
        check_datasets_registered([calibration_dataset(args, cfg)], "--calib-dataset")
    if args.run_eval:
        check_datasets_registered([args.run_eval], "--run-eval")
    if (
        cfg.MODEL.WEIGHTS
        and not os.path.isfile(cfg.MODEL.WEIGHTS)
        and "://" not in (cfg.MODEL.WEIGHTS)
    ):
        raise FileNotFoundError(f"MODEL.WEIGHTS not found: {cfg.MODEL.WEIGHTS}")
    if args.sample_image and not os.path.exists(args.sample_image):
        raise FileNotFoundError(f"--sample-image not found: {args.sample_image}")
    check_output_dir(args.output)


def check_packages(args):
    """ONNX export needs ``onnx`` (torch's exporter) and ``onnxruntime`` (the checks)."""
    if args.format != "onnx":
        return
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"--format onnx needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}: pip install onnx onnxruntime "
            "(or --format torchscript)"
        )


def check_output_dir(path):
    """Create ``--output`` (and its parents), or stop naming it when that cannot be done or
    it is not writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {path}: cannot create the directory: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--output {path}: the directory is not writable")


def calibration_dataset(args, cfg) -> str:
    if args.calib_dataset:
        return args.calib_dataset
    if not cfg.DATASETS.TRAIN:
        raise ValueError("--quantize: no --calib-dataset and no DATASETS.TRAIN to calibrate on")
    return cfg.DATASETS.TRAIN[0]


def quantize(model, image, cfg, args) -> str:
    """Write ``model.int8.onnx``: the model exported with direct convolutions, quantized."""
    from atss_d2.quantization import DatasetCalibrationReader, quantize_onnx

    path = os.path.join(args.output, "model.int8.onnx")
    dataset = calibration_dataset(args, cfg)
    reader = DatasetCalibrationReader(cfg, dataset, args.calib_images)
    with tempfile.TemporaryDirectory(prefix="atss_quant_") as tmp:
        float_path = os.path.join(tmp, "model.float.onnx")
        export_onnx(model, image, float_path, opset_version=args.opset, winograd=False)
        float_convs = quantize_onnx(float_path, path, reader)
    logger.info(
        f"Quantized to {path}: calibrated on {reader.count} images of {dataset}; "
        f"{len(float_convs)} output convs kept in float32"
    )
    return path


def class_names(cfg, args, registered, checkpoint_classes):
    """
    The names of the exported model's class ids and where they come from, chosen as the demo
    chooses them (:func:`atss_d2.demo.class_metadata`), or (None, None) when nothing names them.

    Raises:
        ValueError: the names given are not ``MODEL.ATSS.NUM_CLASSES`` many, or are the
            checkpoint's in another order.
    """
    metadata = class_metadata(cfg, registered, args.classes, checkpoint_classes)
    if metadata.name == UNNAMED:
        logger.warning(
            "No class names (no dataset given, none saved with MODEL.WEIGHTS): "
            'outputs.json has "classes": null; give them with --classes'
        )
        return None, None
    names, source = list(metadata.thing_classes), names_source(metadata)
    check_class_names(cfg.MODEL.WEIGHTS, checkpoint_classes, names, source)
    return names, source


def write_outputs_json(path, cfg, names, classes, classes_source):
    """``outputs.json``: what a deployment needs beside the exported file."""
    info = {
        "input": "image: float32 (3, H, W)",
        "outputs": names,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "classes": classes,
        "classes_from": classes_source,
    }
    with open(path, "w") as f:
        json.dump(info, f, indent=2)


def main(args):
    cfg = setup_cfg(args)
    registered = register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    check_arguments(args, cfg)
    image = sample_image(cfg, args.sample_image)
    model = build_model(cfg).eval()
    report = None
    if cfg.MODEL.WEIGHTS:
        checkpointer = SafeDetectionCheckpointer(model)
        checkpointer.load(cfg.MODEL.WEIGHTS)
        report = checkpointer.last_load_report
    # A head that only partly fits the config (another number of classes) stops here; an
    # empty MODEL.WEIGHTS is a warning (a random model exports, e.g. to time it).
    check_weights_for_inference(cfg.MODEL.WEIGHTS, report, [args.run_eval] if args.run_eval else [])
    classes, classes_source = class_names(
        cfg, args, registered, report.thing_classes if report is not None else None
    )
    model.to("cpu")  # traced on the CPU; the exported model runs anywhere

    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        names = export_torchscript(model, image, path)
    else:
        path = os.path.join(args.output, "model.onnx")
        names = export_onnx(
            model, image, path, opset_version=args.opset, optimize=not args.no_optimize
        )
    write_outputs_json(
        os.path.join(args.output, "outputs.json"), cfg, names, classes, classes_source
    )
    logger.info(f"Exported {args.format} model to {path}; outputs: {names}")

    exported = {args.format: ExportedModel(path, threads=args.threads)}
    if args.quantize:
        exported["onnx int8"] = ExportedModel(
            quantize(model, image, cfg, args), threads=args.threads
        )
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    matches, verdict = compare_detections(expected, exported[args.format].run(image))
    print(f"Exported {args.format} model {verdict}")
    if matches and len(expected) == 0:
        print(
            "  (nothing compared: the model finds nothing on the sample; check with a "
            "--sample-image it detects objects in)"
        )
    if args.quantize:
        agreement = match_detections(expected, exported["onnx int8"].run(image))
        print(
            f"Quantized int8 model: {agreement['actual']} detections ({agreement['expected']} in "
            f"PyTorch), {100 * agreement['matched']:.1f}% of PyTorch's matched (same class, "
            f"IoU >= 0.5; mean IoU {agreement['mean_iou']:.3f}, mean score diff "
            f"{agreement['mean_score_diff']:.4f})"
        )

    if args.run_eval:
        results = {"pytorch": evaluate(model, cfg, args.run_eval, desc="pytorch")}
        for name, runner in exported.items():
            results[name] = evaluate(runner, cfg, args.run_eval, desc=name)
        print(f"Evaluation on {args.run_eval}:")
        print("\n".join(ap_lines(results)))
        with open(os.path.join(args.output, "eval.json"), "w") as f:
            json.dump({"dataset": args.run_eval, "results": results}, f, indent=2, default=float)
    return 0 if matches else 1


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--sample-image", metavar="IMG", help="image to trace with (default: a random image)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="ONNX: export the model as built (no batch-norm folding, no Winograd convs)",
    )
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="also write model.int8.onnx (ONNX Runtime static int8 quantization)",
    )
    parser.add_argument(
        "--calib-dataset",
        metavar="NAME",
        help="registered dataset to calibrate --quantize on (default: DATASETS.TRAIN[0])",
    )
    parser.add_argument(
        "--calib-images", type=int, default=16, metavar="N", help="calibration images (16)"
    )
    parser.add_argument(
        "--run-eval",
        metavar="DATASET",
        help="evaluate the exported model(s) and the PyTorch model on this registered dataset",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime / torch threads for the checks"
    )
    add_dataset_arguments(
        parser,
        classes_help="comma-separated class names: the class order of --voc-dataset folders, "
        "and the names outputs.json gives the class ids (default: those of the first dataset "
        "given, else saved with MODEL.WEIGHTS, else of DATASETS.TEST[0])",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config options: KEY VALUE pairs", default=[]
    )
    return parser


if __name__ == "__main__":
    setup_logger(name="atss_d2")
    try:
        code = main(get_parser().parse_args())
    except (FileNotFoundError, ValueError) as e:  # ConfigError among them
        print(f"export_model.py: error: {e}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
