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
"""

import argparse
import json
import logging
import os

import numpy as np
import torch

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import atss_d2
from atss_d2.checkpoint import SafeDetectionCheckpointer
from atss_d2.export import export_onnx, export_torchscript, instances_from_outputs

logger = logging.getLogger("atss_d2.export")


def setup_cfg(args):
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def sample_image(cfg, path):
    """The sample as the model sees it at test time: Tensor float32 (3, H, W)."""
    if path:
        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    else:
        side = cfg.INPUT.MIN_SIZE_TEST
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(side, side * 4 // 3, 3), dtype=np.uint8)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def run_exported(fmt, path, names, image):
    if fmt == "torchscript":
        with torch.no_grad(), torch.jit.optimized_execution(False):
            outputs = torch.jit.load(path)(image)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"image": image.numpy()})
    return instances_from_outputs(names, outputs)


def check(expected, actual):
    """Compare detections; returns a one-line verdict."""
    if len(expected) != len(actual) or actual.image_size != expected.image_size:
        return f"MISMATCH: {len(actual)} detections exported, {len(expected)} in PyTorch"
    if len(expected) == 0:
        return "matches PyTorch (no detections on the sample)"
    box_diff = (actual.pred_boxes.tensor - expected.pred_boxes.tensor).abs().max().item()
    score_diff = (actual.scores - expected.scores).abs().max().item()
    same_classes = torch.equal(actual.pred_classes.long(), expected.pred_classes)
    if box_diff > 1e-2 or score_diff > 1e-4 or not same_classes:
        return f"MISMATCH: max box diff {box_diff:.3g}, max score diff {score_diff:.3g}"
    return (
        f"matches PyTorch: {len(expected)} detections, max box diff {box_diff:.3g}, "
        f"max score diff {score_diff:.3g}"
    )


def main(args):
    cfg = setup_cfg(args)
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
        names = export_onnx(model, image, path, opset_version=args.opset)
    with open(os.path.join(args.output, "outputs.json"), "w") as f:
        json.dump({"input": "image: float32 (3, H, W)", "outputs": names}, f, indent=2)
    logger.info(f"Exported {args.format} model to {path}; outputs: {names}")

    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    verdict = check(expected, run_exported(args.format, path, names, image))
    print(f"Exported {args.format} model {verdict}")
    return 0 if verdict.startswith("matches") else 1


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
        "opts", nargs=argparse.REMAINDER, help="config options: KEY VALUE pairs", default=[]
    )
    return parser


if __name__ == "__main__":
    setup_logger(name="atss_d2")
    raise SystemExit(main(get_parser().parse_args()))
