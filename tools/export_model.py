#!/usr/bin/env python
"""
Export an ATSS model to TorchScript or ONNX (traced through detectron2's ``TracingAdapter``).

    python tools/export_model.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml \\
        --format onnx --output exported/ --sample-image input.jpg MODEL.WEIGHTS model_final.pth

Writes ``model.onnx`` or ``model.ts`` and ``outputs.json`` (the output names) into ``--output``,
then runs the exported model on the sample and checks its detections against PyTorch's. The
exported model takes one float32 (3, H, W) image, already resized (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST) and in INPUT.FORMAT's channel order, and returns boxes in that image's
coordinates. Without ``--sample-image``, a random image of the test size is used for tracing.

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
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import atss_d2
from atss_d2.checkpoint import SafeDetectionCheckpointer
from atss_d2.data import add_dataset_arguments, register_datasets_from_args
from atss_d2.data.mapper import UnreadableImageError, read_image_any_mode
from atss_d2.engine.config import check_datasets_registered
from atss_d2.export import export_onnx, export_torchscript
from atss_d2.runtime import (
    ExportedModel,
    ap_lines,
    compare_detections,
    evaluate,
    match_detections,
)

logger = logging.getLogger("atss_d2.export")


def setup_cfg(args):
    """The config of ``--config-file`` and ``opts``, with ``MODEL.DEVICE`` cpu: the model is
    built and traced on the CPU (the exported file runs anywhere), whatever device the config
    trains on."""
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE != "cpu":
        logger.info(f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} -> 'cpu': the model is traced on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def sample_image(cfg, path):
    """The sample as the model sees it at test time: Tensor float32 (3, H, W)."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sample-image not found: {path}")
        try:  # as training and evaluation read their images (16-bit, float, any mode)
            image = read_image_any_mode(path, cfg.INPUT.FORMAT)
        except UnreadableImageError as e:
            raise ValueError(f"--sample-image: {e}") from e
    else:
        side = cfg.INPUT.MIN_SIZE_TEST
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


def main(args):
    cfg = setup_cfg(args)
    register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    check_arguments(args, cfg)
    os.makedirs(args.output, exist_ok=True)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialized model")
    model.to("cpu")  # traced on the CPU; the exported model runs anywhere
    image = sample_image(cfg, args.sample_image)

    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        names = export_torchscript(model, image, path)
    else:
        path = os.path.join(args.output, "model.onnx")
        names = export_onnx(
            model, image, path, opset_version=args.opset, optimize=not args.no_optimize
        )
    with open(os.path.join(args.output, "outputs.json"), "w") as f:
        json.dump({"input": "image: float32 (3, H, W)", "outputs": names}, f, indent=2)
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
    add_dataset_arguments(parser)
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
