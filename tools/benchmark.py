#!/usr/bin/env python
"""
ATSS against detectron2's RetinaNet and FCOS, in one process, on the same inputs: inference
latency per image, training step time, peak memory, and the share of the training step spent
in sample selection (each model's ``label_anchors``).

    python tools/benchmark.py                         # CPU, 800x1333 inference, batch-2 training
    python tools/benchmark.py --device cuda --out output/benchmark
    python tools/benchmark.py --quick                 # smoke run, small images
    python tools/benchmark.py --onnx --no-train       # + ATSS exported to ONNX Runtime (CPU)
    python tools/benchmark.py --device cuda --infer-batch 1 8 --cuda-graphs

What is compared (all random weights, R-50-FPN, P3-P7, 80 classes):
- Same ResNet-50 bottom-up for the three (ATSS's config: torchvision-style stride in the 3x3
  conv, FrozenBN, stem and res2 frozen) and the same FPN on res3-res5. The P6/P7 top block is
  each model's own: ATSS and FCOS compute P6 from P5 (ATSS with its own builder,
  ``build_atss_resnet_fpn_backbone``; FCOS with detectron2's ``LastLevelP6P7(in_feature="p5")``
  as its LazyConfig does), RetinaNet uses detectron2's stock ``build_retinanet_resnet_fpn_backbone``
  (P6 from res5, 2048 input channels).
- Heads as each method defines them: ATSS 1 anchor/location, GN towers, centerness; FCOS
  (detectron2's ``FCOSHead``) GN towers, centerness; RetinaNet (detectron2's stock
  ``RetinaNetHead``) 9 anchors/location, no norm. FCOS is built with
  ``norm=callable``: detectron2 0.6's ``RetinaNetHead.__init__`` probes ``get_norm(norm, 1)`` only
  to name the norm type, and ``nn.GroupNorm(32, 1)`` is rejected by current torch; the callable
  gives ``GroupNorm(1, 1)`` to the probe and ``GroupNorm(32, 256)`` to every real layer, which is
  exactly what ``norm="GN"`` builds.
- Inference settings made equal: score threshold 0.05, top 1000 candidates per level, class-aware
  NMS at IoU 0.6, 100 detections (RetinaNet's default NMS is 0.5, FCOS's threshold 0.2; both are
  overridden). The threshold applies to p_cls for ATSS and RetinaNet and to sqrt(p_cls * p_ctr)
  for FCOS (their definitions). With ``--scores dense`` (default) every classification bias is
  set to 0 so that every model keeps its full top 1000 per level and NMS sees the same load; with
  ``--scores prior`` the weights stay as initialised (p_cls ~ 0.01: ATSS and RetinaNet keep
  nothing, FCOS keeps everything, so post-processing differs).
- Padding: all three pad the image to a multiple of 32, as they ship (ATSS as both references;
  detectron2 0.6's ``FPN.size_divisibility`` is the stride of its last *input* feature, res5):
  the same 800x1344 tensor for 800x1333. The JSON records each model's padded input shape.
- Inference batches (``--infer-batch``): each model gets the same batch of N images of one size
  per call; times are per call, also reported per image.
- ``--cuda-graphs``: a row ``atss_graphs``, the same ATSS weights with ``MODEL.ATSS.CUDA_GRAPHS``
  (backbone and head replayed from a CUDA graph per input shape; on the CPU it runs eagerly),
  its detections compared with eager ATSS's like the float32 ONNX row's.
- Training: SGD step (forward, backward, optimizer step) on the same batch, ``--num-gt`` random
  boxes per image. ``label_anchors`` is timed inside the step (with a device sync around it).
- Peak memory: CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before (model,
  optimizer state); CPU, peak RSS above the RSS before (VmHWM after ``/proc/self/clear_refs``),
  one run each, in this process. ``tracemalloc`` does not see torch's memory.
- ``--onnx`` (CPU): the same ATSS model exported by ``atss_d2.export.export_onnx`` (traced on
  the first inference size) and run by ONNX Runtime with as many intra-op threads as torch has,
  timed in the same round-robin as the eager models: ``atss_onnx`` (float32) and
  ``atss_onnx_int8`` (``atss_d2.quantization.quantize_onnx``, calibrated on ``--calib-images``
  random images like the benchmark's). Reported: latency, ratio to eager ATSS, and the
  detections against eager ATSS's (float32: same classes, boxes within 1e-2 px, scores within
  1e-4; int8: the share of eager's detections it finds).
"""

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/, for bench_common
from bench_common import (  # noqa: E402
    OpCounter,
    PeakMemory,
    count_ops,
    group_norm,
    machine_info,
    median,
    random_gt,
    sync,
)
from torch import nn

MIB = 1024 * 1024
# Speed targets per device type: the largest ratio ATSS / baseline of the median time
# (inference call, training step) that counts as met; the report marks each ratio met or MISSED.
TARGETS = {
    "cpu": {
        ("inference", "retinanet"): 0.80,
        ("inference", "fcos"): 1.00,
        ("train_step", "fcos"): 1.05,
    },
    "cuda": {
        ("inference", "retinanet"): 0.90,
        ("inference", "fcos"): 1.00,
        ("train_step", "fcos"): 1.05,
    },
}
# Rows timed as ATSS: eager, and with CUDA graphs (``--cuda-graphs``).
ATSS_ROWS = ("atss", "atss_graphs")
# ONNX Runtime rows (``--onnx``): the largest latency ratio to eager ATSS that counts as met.
ONNX_TARGETS = {"atss_onnx": 0.60, "atss_onnx_int8": 0.40}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class _TimedLabelAnchors:
    """Mixin: accumulates the seconds spent in ``label_anchors`` (the sample selection)."""

    label_anchors_seconds = 0.0
    label_anchors_ops = None  # an int: also count the ATen ops it dispatches

    def label_anchors(self, *args, **kwargs):
        sync(str(self.device))
        start = time.perf_counter()
        if self.label_anchors_ops is None:
            out = super().label_anchors(*args, **kwargs)
        else:
            with OpCounter() as counter:
                out = super().label_anchors(*args, **kwargs)
            self.label_anchors_ops += counter.count
        sync(str(self.device))
        self.label_anchors_seconds += time.perf_counter() - start
        return out


def base_cfg(device: str):
    from detectron2.config import get_cfg

    from atss_d2 import add_atss_config

    cfg = get_cfg()
    add_atss_config(cfg)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg.merge_from_file(os.path.join(root, "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    # FrozenBN for the three: detectron2's stock builders (RetinaNet, FCOS) do not know the
    # config's "FrozenStatsBN" (atss_d2's backbone builder does).
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    return cfg


def build_atss(cfg):
    from atss_d2 import ATSS

    timed = type("TimedATSS", (_TimedLabelAnchors, ATSS), {})
    return timed(cfg)


def build_retinanet(cfg):
    from detectron2.modeling.meta_arch import RetinaNet

    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"  # stock: P6 from res5
    # detectron2's Base-RetinaNet.yaml anchors: 3 scales x 3 ratios per location.
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [
        [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]
    ]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RETINANET.NUM_CLASSES = 80
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.RETINANET.NMS_THRESH_TEST = 0.6  # default 0.5; 0.6 as ATSS and FCOS
    timed = type("TimedRetinaNet", (_TimedLabelAnchors, RetinaNet), {})
    return timed(cfg).to(cfg.MODEL.DEVICE)


def build_fcos(cfg):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import FPN
    from detectron2.modeling.backbone.fpn import LastLevelP6P7
    from detectron2.modeling.backbone.resnet import build_resnet_backbone
    from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

    bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=LastLevelP6P7(256, 256, in_feature="p5"),  # as detectron2's FCOS LazyConfig
    )
    head = FCOSHead(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes=80,
        conv_dims=[256] * 4,
        norm=group_norm,
        prior_prob=0.01,
    )
    timed = type("TimedFCOS", (_TimedLabelAnchors, FCOS), {})
    model = timed(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        num_classes=80,
        test_score_thresh=0.05,  # default 0.2 (on sqrt(p_cls * p_ctr)); 0.05 as the others
        test_topk_candidates=1000,
        test_nms_thresh=0.6,
        max_detections_per_image=100,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    )
    return model.to(cfg.MODEL.DEVICE)


def dense_scores(model: nn.Module) -> None:
    """Classification (and centerness) biases to 0: every candidate passes the score threshold,
    so every model does its full top-k and NMS."""
    with torch.no_grad():
        for name in ("cls_score", "centerness", "ctrness"):
            layer = getattr(model.head, name, None)
            if layer is not None and layer.bias is not None:
                layer.bias.zero_()


BUILDERS: Dict[str, Callable] = {
    "atss": build_atss,
    "retinanet": build_retinanet,
    "fcos": build_fcos,
}
DESCRIPTIONS = {
    "atss": "atss_d2 ATSS, P6 from P5",
    "atss_graphs": "atss_d2 ATSS, MODEL.ATSS.CUDA_GRAPHS (backbone + head replayed)",
    "retinanet": "detectron2 RetinaNet (stock), P6 from res5",
    "fcos": "detectron2 FCOS (GN head), P6 from P5",
    "atss_onnx": "ATSS exported to ONNX, float32, ONNX Runtime CPU",
    "atss_onnx_int8": "ATSS exported to ONNX, int8 (static QDQ), ONNX Runtime CPU",
}


# --------------------------------------------------------------------------------------------
# Inputs and steps
# --------------------------------------------------------------------------------------------
def make_inputs(size, batch: int, num_gt: int, seed: int, with_gt: bool) -> List[dict]:
    from detectron2.structures import Boxes, Instances

    h, w = size
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(batch):
        item = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            "height": h,
            "width": w,
        }
        if with_gt:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(random_gt(num_gt, h, w, seed + 1000 * i, "cpu"))
            inst.gt_classes = torch.randint(0, 80, (num_gt,), generator=g)
            item["instances"] = inst
        inputs.append(item)
    return inputs


def to_device(inputs: List[dict], device: str) -> List[dict]:
    out = []
    for item in inputs:
        item = dict(item)
        item["image"] = item["image"].to(device)
        if "instances" in item:
            item["instances"] = item["instances"].to(device)
        out.append(item)
    return out


class TrainStep:
    """One SGD iteration as detectron2's SimpleTrainer does it."""

    def __init__(self, model: nn.Module, inputs: List[dict]):
        self.model = model
        self.inputs = inputs
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def __call__(self):
        from detectron2.utils.events import EventStorage

        with EventStorage(0):
            self.model.train()
            losses = sum(self.model(self.inputs).values())
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()


class Infer:
    def __init__(self, model: nn.Module, inputs: List[dict]):
        self.model = model
        self.inputs = inputs

    def __call__(self):
        self.model.eval()
        with torch.no_grad():
            return self.model(self.inputs)


class OnnxInfer:
    """One image through an exported model in ONNX Runtime (:class:`atss_d2.runtime.ExportedModel`),
    with :class:`Infer`'s output: ``[{"instances": Instances}]``, boxes in the image's size."""

    def __init__(self, runner, image: torch.Tensor):
        self.runner = runner
        self.image = image.float()  # as the exported model takes it, converted once

    def __call__(self):
        return [{"instances": self.runner.run(self.image)}]


def export_onnx_models(model: nn.Module, image: torch.Tensor, args, threads: int) -> Dict:
    """Export ``model`` (eager ATSS) traced on ``image`` to float32 ONNX and, quantized, int8;
    returns ``{"atss_onnx": ExportedModel, "atss_onnx_int8": ExportedModel}``."""
    from atss_d2.export import export_onnx
    from atss_d2.quantization import ArrayCalibrationReader, quantize_onnx
    from atss_d2.runtime import ExportedModel

    out = os.path.join(args.out, "onnx")
    os.makedirs(out, exist_ok=True)
    image = image.float()
    paths = {"atss_onnx": os.path.join(out, "model.onnx")}
    export_onnx(model, image, paths["atss_onnx"])
    if "int8" in args.onnx_precisions:
        # Direct convolutions (no Winograd): they become the integer convolutions.
        float_convs = os.path.join(out, "model.float_convs.onnx")
        export_onnx(model, image, float_convs, winograd=False)
        h, w = image.shape[-2:]
        calib = make_inputs((h, w), args.calib_images, 0, args.seed + 7, with_gt=False)
        paths["atss_onnx_int8"] = os.path.join(out, "model.int8.onnx")
        reader = ArrayCalibrationReader(x["image"].float().numpy() for x in calib)
        quantize_onnx(float_convs, paths["atss_onnx_int8"], reader)
    if "float32" not in args.onnx_precisions:
        paths.pop("atss_onnx")
    return {name: ExportedModel(path, threads=threads) for name, path in paths.items()}


def onnx_agreement(name: str, expected, actual) -> dict:
    """Detections of an ONNX row against eager ATSS's: exact for float32, matched for int8."""
    from atss_d2.runtime import compare_detections, match_detections

    if name == "atss_onnx":
        ok, verdict = compare_detections(expected, actual)
        return {"exact": ok, "verdict": verdict}
    m = match_detections(expected, actual)
    verdict = (
        f"{m['actual']} detections ({m['expected']} eager), {100 * m['matched']:.1f}% of eager's "
        f"matched (same class, IoU >= 0.5), mean IoU {m['mean_iou']:.3f}, "
        f"mean score diff {m['mean_score_diff']:.4f}"
    )
    return dict(m, verdict=verdict)


def round_robin(steps: Dict[str, Callable], models: Optional[Dict], device, iters, warmup, desc):
    """Times every step ``iters`` times, interleaved across models so that load changes on a
    shared machine hit all of them alike. Returns per model the step times and the
    ``label_anchors`` time of each step: ``models[name].label_anchors_seconds`` (see
    :class:`_TimedLabelAnchors`) where ``models`` has the model and it has that counter, else 0."""
    from tqdm import tqdm

    times = {k: [] for k in steps}
    label = {k: [] for k in steps}
    with tqdm(total=len(steps) * (iters + warmup), desc=desc) as bar:
        for _ in range(warmup):
            for fn in steps.values():
                fn()
                bar.update()
        for _ in range(iters):
            for name, fn in steps.items():
                model = (models or {}).get(name)
                timed = hasattr(model, "label_anchors_seconds")
                if timed:
                    model.label_anchors_seconds = 0.0
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
                label[name].append(model.label_anchors_seconds if timed else 0.0)
                bar.update()
    return times, label


def peak_memory(fn: Callable, device: str) -> Dict[str, float]:
    with PeakMemory(device) as mem:
        fn()
    out = {"extra_mib": mem.extra / MIB, "method": mem.method}
    if device.startswith("cuda"):
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def ratio(a, b):
    return a / b if a and b else float("nan")


def print_report(result: dict) -> List[str]:
    lines = []
    s = result["settings"]
    lines.append(
        f"device {s['device']} ({result['machine'].get('gpu') or result['machine']['cpu']}), "
        f"torch {result['machine']['torch']}, {result['machine']['torch_threads']} threads"
    )
    for key, table in result["inference"].items():
        lines.append(
            f"\nInference, {key} (HxW, images per call), median of {s['iters']} after "
            f"{s['warmup']} warm-up (scores: {s['scores']})"
        )
        lines.append(f"{'model':<15} {'ms/call':>9} {'ms/img':>9} {'extra MiB':>10}  description")
        for name, r in table.items():
            lines.append(
                f"{name:<15} {r['median_ms']:>9.1f} {r['ms_per_image']:>9.1f} "
                f"{r['memory']['extra_mib']:>10.0f}  {DESCRIPTIONS[name]}"
            )
            if "agreement" in r and name not in ONNX_TARGETS:
                lines.append(f"{'':<15} vs eager atss: {r['agreement']['verdict']}")
        onnx_rows = [n for n in ONNX_TARGETS if n in table]
        if onnx_rows:
            eager = table["atss"]["median_ms"]
            lines.append(
                f"ONNX Runtime ({s['onnx_threads']} intra-op threads) vs eager atss "
                f"({eager:.1f} ms), same run, same input:"
            )
            for name in onnx_rows:
                r = table[name]
                value = ratio(r["median_ms"], eager)
                target = ONNX_TARGETS[name]
                mark = "met" if value <= target else "MISSED"
                lines.append(
                    f"  {name:<15} {value:6.3f} x eager  target <= {target:.2f}: {mark}; "
                    f"{r['agreement']['verdict']}"
                )
    t = s["train_size"]
    lines.append(
        f"\nTraining step, batch {s['batch']} of {t[0]}x{t[1]}, {s['num_gt']} GT/image, "
        f"SGD; median of {s['iters']} after {s['warmup']} warm-up"
    )
    lines.append(f"{'model':<13} {'step ms':>9} {'label ms':>9} {'share':>7} {'extra MiB':>10}")
    for name, r in result["train"].items():
        lines.append(
            f"{name:<13} {r['median_ms']:>9.1f} {r['label_anchors_median_ms']:>9.2f} "
            f"{100 * r['label_anchors_share']:>6.2f}% {r['memory']['extra_mib']:>10.0f}"
        )
    counted = [r for table in result["inference"].values() for r in table.values()]
    if counted and "aten_ops" in counted[0]:
        lines.append(
            "\nATen ops dispatched per call (views included; on a GPU about the kernel launches)"
        )
        lines.append(f"{'model':<13} {'inference':>10} {'train step':>11} {'label_anchors':>14}")
        first = next(iter(result["inference"].values()))
        for name, r in first.items():
            if "aten_ops" not in r:
                continue  # ONNX Runtime rows dispatch no ATen op
            t = result["train"].get(name, {})
            lines.append(
                f"{name:<13} {r['aten_ops']:>10} {t.get('aten_ops', '-'):>11} "
                f"{t.get('label_anchors_aten_ops', '-'):>14}"
            )
    lines.append("\nRatios (ATSS / baseline; lower is better)")
    for (what, base), target, value in result["ratios"]:
        mark = (
            ""
            if target is None
            else f"  target <= {target:.2f}: " + ("met" if value <= target else "MISSED")
        )
        lines.append(f"  {what:<44} /{base:<10} {value:6.3f}{mark}")
    share = result["train"].get("atss", {}).get("label_anchors_share")
    if share is not None:
        lines.append(
            f"  ATSS sample selection share of the step: {100 * share:.2f}%  target < 5%: "
            + ("met" if share < 0.05 else "MISSED")
        )
    text = "\n".join(lines)
    print(text)
    return lines


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next(iter(result["inference"]))
    infer = result["inference"][key]
    train = result["train"]
    panels = [
        (f"inference ms / image ({key})", {k: v["ms_per_image"] for k, v in infer.items()}),
        ("training step ms", {k: v["median_ms"] for k, v in train.items()}),
        (
            "peak extra memory, training (MiB)",
            {k: v["memory"]["extra_mib"] for k, v in train.items()},
        ),
        (
            "sample selection share of step (%)",
            {k: 100 * v["label_anchors_share"] for k, v in train.items()},
        ),
    ]
    colors = {
        "atss": "tab:green",
        "atss_graphs": "tab:purple",
        "retinanet": "tab:blue",
        "fcos": "tab:orange",
        "atss_onnx": "tab:olive",
        "atss_onnx_int8": "tab:cyan",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (title, values) in zip(axes, panels):
        names = list(values)
        bars = ax.bar(names, [values[n] for n in names], color=[colors[n] for n in names])
        for bar, n in zip(bars, names):
            ax.annotate(
                f"{values[n]:.0f}" if values[n] >= 100 else f"{values[n]:.3g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    s = result["settings"]
    dev = result["machine"].get("gpu") or result["machine"]["cpu"]
    fig.suptitle(
        f"ATSS vs detectron2 RetinaNet / FCOS, R-50-FPN, {s['device']} ({dev})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sizes", nargs="+", default=["800x1333"], help="inference sizes HxW")
    p.add_argument(
        "--infer-batch", type=int, nargs="+", default=[1], help="images per inference call"
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time ATSS with MODEL.ATSS.CUDA_GRAPHS (row atss_graphs; eager on the CPU)",
    )
    p.add_argument("--train-size", default="800x1333", help="training image size HxW")
    p.add_argument("--batch", type=int, default=2, help="training images per step")
    p.add_argument("--num-gt", type=int, default=50, help="GT boxes per training image")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument("--scores", choices=["dense", "prior"], default="dense")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--no-ops", action="store_true", help="skip counting the ATen ops of each model's calls"
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also time ATSS exported to ONNX Runtime (CPU; see --onnx-precisions)",
    )
    p.add_argument(
        "--onnx-precisions",
        nargs="+",
        choices=["float32", "int8"],
        default=["float32", "int8"],
        help="the ONNX Runtime rows of --onnx",
    )
    p.add_argument(
        "--calib-images", type=int, default=2, help="random images calibrating the int8 model"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="output/benchmark", help="folder for benchmark.json/.png")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 512x640 images, batch 1, 1 warm-up, 2 iterations",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.sizes, args.train_size, args.batch = ["512x640"], "512x640", 1
        args.iters, args.warmup = min(args.iters, 2), 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    torch.manual_seed(args.seed)
    cfg = base_cfg(device)

    from tqdm import tqdm

    import atss_d2  # noqa: F401  (registration)

    models = {}
    for name in tqdm(args.models, desc="building models"):
        model = BUILDERS[name](cfg)
        model.to(device)
        if args.scores == "dense":
            dense_scores(model)
        models[name] = model
    if args.cuda_graphs:
        if "atss" not in models:
            raise SystemExit("--cuda-graphs: needs atss among --models")
        graphed_cfg = cfg.clone()
        graphed_cfg.MODEL.ATSS.CUDA_GRAPHS = True
        graphed_cfg.MODEL.ATSS.CUDA_GRAPHS_MAX_SHAPES = max(8, len(args.sizes))
        graphed = build_atss(graphed_cfg).to(device)
        graphed.load_state_dict(models["atss"].state_dict())  # dense_scores' biases included
        models["atss_graphs"] = graphed

    sizes = [parse_size(s) for s in args.sizes]
    train_size = parse_size(args.train_size)
    onnx_models = {}
    if args.onnx:
        if device != "cpu" or "atss" not in models:
            raise SystemExit("--onnx: needs --device cpu and atss among --models")
        first = make_inputs(sizes[0], 1, 0, args.seed, with_gt=False)[0]["image"]
        onnx_models = export_onnx_models(models["atss"], first, args, torch.get_num_threads())
    result = {
        "machine": machine_info(device),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "settings": {
            "device": device,
            "sizes": sizes,
            "train_size": train_size,
            "batch": args.batch,
            "infer_batch": args.infer_batch,
            "num_gt": args.num_gt,
            "iters": args.iters,
            "warmup": args.warmup,
            "scores": args.scores,
            "models": DESCRIPTIONS,
            "inference": "score thresh 0.05, top 1000/level, NMS 0.6, 100 detections",
            "onnx_threads": torch.get_num_threads() if onnx_models else None,
        },
        "inference": {},
        "train": {},
    }
    for size in sizes:
        for batch in args.infer_batch:
            key = f"{size[0]}x{size[1]}, batch {batch}"
            result["inference"][key] = infer_table(models, onnx_models, size, batch, device, args)

    if not args.no_train:
        train_models = {k: m for k, m in models.items() if k != "atss_graphs"}
        inputs = to_device(
            make_inputs(train_size, args.batch, args.num_gt, args.seed + 1, True), device
        )
        steps = {k: TrainStep(m, inputs) for k, m in train_models.items()}
        times, label = round_robin(
            steps,
            train_models,
            device,
            args.iters,
            args.warmup,
            f"training {train_size[0]}x{train_size[1]}x{args.batch}",
        )
        for name, fn in steps.items():
            shares = [lbl / t for lbl, t in zip(label[name], times[name])]
            entry = {
                "times_ms": [1000 * t for t in times[name]],
                "median_ms": 1000 * median(times[name]),
                "label_anchors_ms": [1000 * t for t in label[name]],
                "label_anchors_median_ms": 1000 * median(label[name]),
                "label_anchors_share": median(shares),
            }
            entry["memory"] = ({} if args.no_memory else peak_memory(fn, device)) or {
                "extra_mib": float("nan")
            }
            if not args.no_ops:
                model = models[name]
                model.label_anchors_ops = 0
                entry["aten_ops"] = count_ops(fn)
                entry["label_anchors_aten_ops"] = model.label_anchors_ops
                model.label_anchors_ops = None
            result["train"][name] = entry

    result["ratios"] = speed_ratios(result, device, args.no_memory)
    first = next(iter(result["inference"].values()), {})
    result["onnx_ratios"] = {
        name: {
            "ratio_to_eager_atss": ratio(first[name]["median_ms"], first["atss"]["median_ms"]),
            "target": target,
        }
        for name, target in ONNX_TARGETS.items()
        if name in first
    }

    print()
    result["report"] = print_report(result)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    if result["train"] and result["inference"]:
        with contextlib.suppress(ImportError):
            plot(result, os.path.join(args.out, "benchmark.png"))
    print(f"\nwrote {args.out}/benchmark.json and benchmark.png")
    return 0


def infer_table(models, onnx_models, size, batch, device, args) -> Dict[str, dict]:
    """Every model on the same batch of ``batch`` images of ``size``, timed round robin."""
    from atss_d2.runtime import compare_detections

    key = f"{size[0]}x{size[1]}, batch {batch}"
    inputs = to_device(make_inputs(size, batch, 0, args.seed, with_gt=False), device)
    steps = {k: Infer(m, inputs) for k, m in models.items()}
    runners = dict(models)
    if batch == 1:  # the exported models take one image
        for name, runner in onnx_models.items():
            steps[name] = runners[name] = OnnxInfer(runner, inputs[0]["image"])
    times, _ = round_robin(steps, runners, device, args.iters, args.warmup, f"inference {key}")
    table = {}
    for name, fn in steps.items():
        entry = {
            "times_ms": [1000 * t for t in times[name]],
            "median_ms": 1000 * median(times[name]),
            "ms_per_image": 1000 * median(times[name]) / batch,
        }
        outputs = fn()
        entry["detections"] = [len(out["instances"]) for out in outputs]
        if name in onnx_models:
            eager = steps["atss"]()[0]["instances"]
            entry["agreement"] = onnx_agreement(name, eager, outputs[0]["instances"])
        else:
            with torch.no_grad():
                padded = models[name].preprocess_image(inputs).tensor.shape
            entry["padded_input"] = list(padded)
        entry["memory"] = ({} if args.no_memory else peak_memory(fn, device)) or {
            "extra_mib": float("nan")
        }
        if not args.no_ops and name not in onnx_models:
            entry["aten_ops"] = count_ops(fn)
        table[name] = entry
    if "atss_graphs" in table:
        eager = steps["atss"]()
        graphed = steps["atss_graphs"]()
        verdicts = [
            compare_detections(e["instances"], g["instances"]) for e, g in zip(eager, graphed)
        ]
        exact = all(ok for ok, _ in verdicts)
        table["atss_graphs"]["agreement"] = {
            "exact": exact,
            "verdict": (
                f"same detections in all {batch} images (first: {verdicts[0][1]})"
                if exact
                else "; ".join(v for ok, v in verdicts if not ok)
            ),
            "graphs_captured": models["atss_graphs"].cuda_graphs.captures,
        }
    return table


def speed_ratios(result: dict, device: str, no_memory: bool) -> list:
    """((what, baseline), target or None, ATSS / baseline) for every inference table and the
    training step: time for each ATSS row, memory for eager ATSS."""
    targets = TARGETS["cuda" if device.startswith("cuda") else "cpu"]
    ratios = []
    tables = [(f"inference {key}", "inference", t) for key, t in result["inference"].items()]
    tables.append(("train_step", "train_step", result["train"]))
    for base in ("retinanet", "fcos"):
        for label, what, table in tables:
            if base not in table:
                continue
            for row in ATSS_ROWS:
                if row in table:
                    value = ratio(table[row]["median_ms"], table[base]["median_ms"])
                    name = label if row == "atss" else f"{label} ({row})"
                    ratios.append(((name, base), targets.get((what, base)), value))
            if "atss" in table and not no_memory:
                value = ratio(
                    table["atss"]["memory"]["extra_mib"], table[base]["memory"]["extra_mib"]
                )
                ratios.append(((f"{label} memory", base), None, value))
    return ratios


if __name__ == "__main__":
    sys.exit(main())
