#!/usr/bin/env python
"""
atss_d2 against mmdetection 3.x itself: the same randomly initialised ATSS R-50-FPN (3 classes),
built by mmdetection from its ``configs/atss/atss_r50_fpn_1x_coco.py`` model settings, converted
with ``tools/convert_checkpoint.py --source mmdet`` and loaded into atss_d2's
``configs/COCO-Detection/atss_R_50_FPN_1x.yaml`` model, on the same images and boxes:

- losses (``loss_cls``, ``loss_bbox`` / ``loss_box_reg``, ``loss_centerness``) on three padded
  batches: two 512x640 images, mixed sizes 512x640 + 384x480, and 512x640 twice with the second
  image without ground truth;
- detections (count, boxes, scores, labels) on three single images of other sizes: after NMS,
  and the candidates before it (the top 1000 per level above the score threshold, by score).

Prints a table of relative differences and fails (exit code 1) if one exceeds ``--threshold``
(1e-4). Relative difference: ``|a - b| / |a|`` for a loss or a count (``a`` mmdetection's);
``max |a - b| / max |a|`` over a tensor (boxes, scores); for labels, the fraction that differ.

    PYTHONPATH=/tmp/mmpkgs python tools/check_mmdet_parity.py --json output/mmdet_parity.json
    python tools/check_mmdet_parity.py --mmdet-python /tmp/mmvenv/bin/python
    python tools/check_mmdet_parity.py MODEL.ATSS.NUM_POS_NORM total   # atss_d2 overrides: fails

mmdetection is not a dependency of atss_d2: it runs in this process when importable, or in
another interpreter (``--mmdet-python``) on the inputs passed through a file (exit code 2 when
neither works). mmcv-lite (no compiled ops) is enough: ``mmcv._ext`` is replaced by a
placeholder in which only ``nms`` works, implemented with ``torchvision.ops.nms`` (mmcv's NMS
kernel keeps the same boxes: greedy, by decreasing score, IoU > threshold suppressed, offset 0).

Both sides see the same uint8 images (RGB for atss_d2, BGR for mmdetection's data preprocessor,
which converts them): normalisation and padding to a multiple of 32 are each model's own. The
random model has BatchNorm statistics, affine parameters, GroupNorm, per-level scales and head
weights away from their initial values, and a classification bias that lets detections pass
the 0.05 score threshold. atss_d2 runs with ``MODEL.ATSS.SCORE_MODE "product"``
(mmdetection's score ``p_cls * p_ctr``; the default ``"sqrt"`` ranks the same).
"""

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/, for bench_common
from bench_common import (  # noqa: E402
    machine_info,
    mmcv_ext_placeholder,
    random_gt,
    run_mmdet_worker,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"
SHIPPED_CONFIG = "atss_r50_fpn_1x_coco.py"  # mmdetection's, under mmdet/.mim/configs/atss
NUM_CLASSES = 3
THRESHOLD = 1e-4
LOSS_SIZES = {
    "same size": [(512, 640), (512, 640)],
    "mixed sizes": [(512, 640), (384, 480)],
    "without GT": [(512, 640), (512, 640)],
}
DETECTION_SIZES = [(512, 640), (375, 500), (800, 1088)]
GT_PER_IMAGE = 8
# Classification bias of the random model: p = sigmoid(-2) = 0.12 before the random features
# move it, so that many (anchor, class) pairs pass the 0.05 score threshold.
CLS_BIAS = -2.0
# atss_d2 name of each mmdetection loss.
LOSS_NAMES = {
    "loss_cls": "loss_cls",
    "loss_bbox": "loss_box_reg",
    "loss_centerness": "loss_centerness",
}
INSTALL_HINT = (
    "install mmdetection outside the project's venv, without a second torch, and run the tool "
    "with it on the path:\n"
    "  pip install --target /tmp/mmpkgs --no-deps mmengine==0.10.7 mmdet==3.3.0 "
    "mmcv-lite==2.1.0 addict yapf rich markdown-it-py mdurl pygments terminaltables shapely "
    "scipy six\n"
    "  PYTHONPATH=/tmp/mmpkgs python tools/check_mmdet_parity.py\n"
    "or in a throwaway venv with its own torch, passed as --mmdet-python /tmp/mmvenv/bin/python"
)


def mmdet_model_config(num_classes: int = NUM_CLASSES) -> dict:
    """mmdetection 3.3's ``configs/atss/atss_r50_fpn_1x_coco.py`` model, with ``num_classes``
    and without the ImageNet initialisation (``init_cfg``) of the backbone."""
    return dict(
        type="ATSS",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_size_divisor=32,
        ),
        backbone=dict(
            type="ResNet",
            depth=50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            frozen_stages=1,
            norm_cfg=dict(type="BN", requires_grad=True),
            norm_eval=True,
            style="pytorch",
            init_cfg=None,
        ),
        neck=dict(
            type="FPN",
            in_channels=[256, 512, 1024, 2048],
            out_channels=256,
            start_level=1,
            add_extra_convs="on_output",
            num_outs=5,
        ),
        bbox_head=dict(
            type="ATSSHead",
            num_classes=num_classes,
            in_channels=256,
            stacked_convs=4,
            feat_channels=256,
            anchor_generator=dict(
                type="AnchorGenerator",
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[8, 16, 32, 64, 128],
            ),
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder",
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2],
            ),
            loss_cls=dict(
                type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0
            ),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        ),
        train_cfg=dict(
            assigner=dict(type="ATSSAssigner", topk=9),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        test_cfg=dict(
            nms_pre=1000,
            min_bbox_size=0,
            score_thr=0.05,
            nms=dict(type="nms", iou_threshold=0.6),
            max_per_img=100,
        ),
    )


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def random_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (3, H, W) RGB image: noise at 1/16 of the size, upsampled (structure at several
    scales, as the detector sees in real images)."""
    coarse = torch.rand(1, 3, -(-height // 16), -(-width // 16), generator=generator)
    image = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )
    return (image[0] * 255).round().to(torch.uint8)


def build_cases(seed: int = 0) -> Tuple[List[dict], List[dict]]:
    """
    The loss batches (``LOSS_SIZES``) and the detection images (``DETECTION_SIZES``).

    Returns:
        loss_cases, detection_cases: dicts with ``name`` and ``images``, a list of
        ``{"image": uint8 (3, H, W) RGB, "boxes": (G, 4) XYXY, "labels": (G,) int64}``
        (G = 0 for the second image of "without GT").
    """
    g = torch.Generator().manual_seed(seed)

    def image(h, w, num_gt, index):
        boxes = random_gt(num_gt, h, w, seed + 1000 + index, "cpu")
        labels = torch.randint(0, NUM_CLASSES, (num_gt,), generator=g)
        return {"image": random_image(h, w, g), "boxes": boxes, "labels": labels}

    loss_cases, index = [], 0
    for name, sizes in LOSS_SIZES.items():
        images = []
        for i, (h, w) in enumerate(sizes):
            empty = name == "without GT" and i == 1
            images.append(image(h, w, 0 if empty else GT_PER_IMAGE, index))
            index += 1
        loss_cases.append({"name": name, "images": images})
    detection_cases = []
    for h, w in DETECTION_SIZES:
        detection_cases.append({"name": f"{h}x{w}", "images": [image(h, w, 0, index)]})
        index += 1
    return loss_cases, detection_cases


# --------------------------------------------------------------------------------------------
# mmdetection
# --------------------------------------------------------------------------------------------
def _torchvision_nms(bboxes, scores, iou_threshold: float, offset: int = 0):
    """mmcv's ``nms`` kernel (``mmcv._ext.nms``) for the mmcv-lite placeholder of this tool:
    indices kept, by decreasing score."""
    import torchvision

    if offset != 0:
        raise NotImplementedError("nms with offset 1 (mmcv-lite placeholder of this tool)")
    return torchvision.ops.nms(bboxes, scores, iou_threshold)


def import_mmdet():
    """mmdetection's version, after registering its modules, or None and the reason."""
    import importlib.util

    if importlib.util.find_spec("mmdet") is None:
        return None, "mmdet is not importable"
    placeholder = mmcv_ext_placeholder()
    if placeholder is not None:
        placeholder.nms = _torchvision_nms
    import mmdet
    from mmdet.utils import register_all_modules

    register_all_modules()
    return mmdet.__version__, ""


def shipped_config_matches(cfg: dict) -> Optional[bool]:
    """Whether ``cfg`` equals the model of the installed mmdetection's own
    ``SHIPPED_CONFIG`` (with the same ``num_classes`` and backbone ``init_cfg``);
    None when the package ships no configs."""
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim/configs/atss", SHIPPED_CONFIG)
    if not os.path.isfile(path):
        return None
    shipped = Config.fromfile(path).model.to_dict()
    shipped["bbox_head"]["num_classes"] = cfg["bbox_head"]["num_classes"]
    shipped["backbone"]["init_cfg"] = cfg["backbone"]["init_cfg"]
    return json.loads(json.dumps(shipped)) == json.loads(json.dumps(cfg))


@torch.no_grad()
def randomise(model, seed: int) -> None:
    """Move every normalisation and head parameter away from its initial value (seeded):
    BatchNorm statistics and affine parameters, GroupNorm, per-level scales, the head's convs;
    the classification bias to ``CLS_BIAS``."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)

    def uniform(t, low, high):
        t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)

    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            uniform(m.weight, 0.3, 0.8)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            uniform(m.running_var, 0.5, 2.0)
        elif isinstance(m, nn.GroupNorm):
            uniform(m.weight, 0.5, 1.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.Conv2d) and name.startswith("bbox_head."):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for scale in model.bbox_head.scales:
        uniform(scale.scale, 0.8, 1.2)
    model.bbox_head.atss_cls.bias.fill_(CLS_BIAS)


def _mmdet_inputs(images: List[dict], with_gt: bool) -> dict:
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for x in images:
        h, w = x["image"].shape[1:]
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
        )
        if with_gt:
            sample.gt_instances = InstanceData(bboxes=x["boxes"], labels=x["labels"])
        samples.append(sample)
    # DetDataPreprocessor(bgr_to_rgb=True) takes BGR images, as mmcv reads them.
    return {"inputs": [x["image"].flip(0) for x in images], "data_samples": samples}


def run_mmdet_model(job: dict) -> dict:
    """Build and randomise mmdetection's model, run it on ``job``'s cases; returns its version,
    state dict, losses and detections."""
    import logging
    import warnings

    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor
    # AnchorHead's own use of its deprecated ``num_anchors``.
    warnings.filterwarnings("ignore", "DeprecationWarning: `num_anchors`", UserWarning)
    torch.manual_seed(job["seed"])
    cfg = mmdet_model_config()
    model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    randomise(model, job["seed"])
    losses = {}
    model.train()  # norm_eval=True: the backbone's BatchNorms stay in eval mode
    with torch.no_grad():
        for case in job["loss_cases"]:
            data = model.data_preprocessor(_mmdet_inputs(case["images"], True), training=True)
            out = model.loss(data["inputs"], data["data_samples"])
            losses[case["name"]] = {k: float(sum(v)) for k, v in out.items()}
    model.eval()
    detections = {}
    with torch.no_grad():
        for case in job["detection_cases"]:
            data = model.data_preprocessor(_mmdet_inputs(case["images"], False), training=False)
            metas = [x.metainfo for x in data["data_samples"]]
            outs = model.bbox_head(model.extract_feat(data["inputs"]))  # as model.predict
            for kind, with_nms in (("detections", True), ("candidates", False)):
                (pred,) = model.bbox_head.predict_by_feat(
                    *outs, batch_img_metas=metas, rescale=False, with_nms=with_nms
                )
                detections[f"{kind} {case['name']}"] = {
                    "boxes": pred.bboxes.clone(),
                    "scores": pred.scores.clone(),
                    "labels": pred.labels.clone(),
                }
    return {
        "config_matches_shipped": shipped_config_matches(cfg),
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "losses": losses,
        "detections": detections,
    }


def mmdet_worker(in_path: str, out_path: str) -> int:
    """Run mmdetection on the saved job (used through --mmdet-python); exit code 0."""
    job = torch.load(in_path)
    torch.set_num_threads(job["threads"])
    version, reason = import_mmdet()
    if version is None:
        raise SystemExit(f"mmdet worker: {reason}")
    torch.save({"version": version, **run_mmdet_model(job)}, out_path)
    return 0


def run_mmdet(job: dict, mmdet_python: Optional[str]) -> Tuple[Optional[dict], str]:
    """mmdetection's results in this process or in ``mmdet_python``, or None and the reason."""
    if mmdet_python:
        return run_mmdet_worker(mmdet_python, __file__, job)
    version, reason = import_mmdet()
    if version is None:
        return None, reason
    return {"version": version, **run_mmdet_model(job)}, ""


# --------------------------------------------------------------------------------------------
# atss_d2
# --------------------------------------------------------------------------------------------
def build_atss_d2(
    state_dict: Dict[str, torch.Tensor], version: str, tmp: str, extra_opts: Sequence[str] = ()
):
    """atss_d2's model from ``CONFIG`` (+ ``extra_opts``) with mmdetection's weights, converted
    by ``tools/convert_checkpoint.py --source mmdet`` and loaded by
    ``SafeDetectionCheckpointer``."""
    import contextlib
    import io

    import convert_checkpoint
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from atss_d2 import add_atss_config
    from atss_d2.checkpoint import SafeDetectionCheckpointer

    opts = ["MODEL.ATSS.NUM_CLASSES", str(NUM_CLASSES)]
    src, dst = os.path.join(tmp, "mmdet_atss.pth"), os.path.join(tmp, "atss_d2.pth")
    meta = {"mmdet_version": version, "dataset_meta": {"classes": ["a", "b", "c"]}}
    torch.save({"state_dict": state_dict, "meta": meta}, src)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        argv = ["--source", "mmdet", src, dst, "--config-file", os.path.join(ROOT, CONFIG), *opts]
        code = convert_checkpoint.main(argv)
    if code != 0:
        raise RuntimeError(f"tools/convert_checkpoint.py failed:\n{log.getvalue()}")
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, CONFIG))
    cfg.merge_from_list(opts + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    cfg.merge_from_list(["MODEL.ATSS.SCORE_MODE", "product", *extra_opts])
    model = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(dst)
    report = checkpointer.last_load_report
    partial = {p: n for p, n in report.parts.items() if n[0] != n[1]}
    if partial or report.reinitialised:
        raise RuntimeError(f"converted weights not fully loaded: {partial} {report.reinitialised}")
    return model


def _d2_inputs(images: List[dict], with_gt: bool) -> List[dict]:
    from detectron2.structures import Boxes, Instances

    inputs = []
    for x in images:
        h, w = x["image"].shape[1:]
        item = {"image": x["image"], "height": h, "width": w}
        if with_gt:
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(x["boxes"])
            instances.gt_classes = x["labels"]
            item["instances"] = instances
        inputs.append(item)
    return inputs


@torch.no_grad()
def run_atss_d2(model, loss_cases: List[dict], detection_cases: List[dict]) -> dict:
    from detectron2.utils.events import EventStorage

    losses = {}
    model.train()
    with EventStorage():
        for case in loss_cases:
            out = model(_d2_inputs(case["images"], True))
            losses[case["name"]] = {k: float(v) for k, v in out.items()}
    model.eval()
    detections = {}
    for case in detection_cases:
        for kind, nms_thresh, max_dets in (
            ("detections", model.test_nms_thresh, model.max_detections_per_image),
            # IoU > 1 never happens and no cap: every candidate of every level, by score.
            ("candidates", 1.0, 10**9),
        ):
            saved = model.test_nms_thresh, model.max_detections_per_image
            model.test_nms_thresh, model.max_detections_per_image = nms_thresh, max_dets
            try:
                (out,) = model(_d2_inputs(case["images"], False))
            finally:
                model.test_nms_thresh, model.max_detections_per_image = saved
            instances = out["instances"]
            detections[f"{kind} {case['name']}"] = {
                "boxes": instances.pred_boxes.tensor,
                "scores": instances.scores,
                "labels": instances.pred_classes,
            }
    return {"losses": losses, "detections": detections}


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------
def relative(a: float, b: float) -> float:
    """|a - b| / |a|; 0 when both are 0."""
    if a == b:
        return 0.0
    return abs(a - b) / abs(a) if a != 0 else math.inf


def _by_score(det: Dict[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    """The ``n`` highest-scored of ``det`` (boxes, scores, labels), by decreasing score."""
    order = det["scores"].argsort(descending=True, stable=True)[:n]
    return {k: v[order] for k, v in det.items()}


def compare(mm: dict, ours: dict) -> List[dict]:
    """Rows (case, quantity, mmdetection, atss_d2, relative difference)."""
    rows = []
    for case, values in mm["losses"].items():
        for mm_name, d2_name in LOSS_NAMES.items():
            a, b = values[mm_name], ours["losses"][case][d2_name]
            rows.append(dict(case=case, quantity=mm_name, mmdet=a, atss_d2=b, rel=relative(a, b)))
    for case, det in mm["detections"].items():
        other = ours["detections"][case]
        n_mm, n_ours = len(det["scores"]), len(other["scores"])
        rows.append(
            dict(
                case=case, quantity="count", mmdet=n_mm, atss_d2=n_ours, rel=relative(n_mm, n_ours)
            )
        )
        n = min(n_mm, n_ours)
        # By rank of score (mmdetection's candidates come level by level).
        det, other = _by_score(det, n), _by_score(other, n)
        for key in ("boxes", "scores"):
            a, b = det[key].double(), other[key].double()
            diff = (a - b).abs().max().item() if n else 0.0
            scale = a.abs().max().item() if n else 0.0
            rows.append(
                dict(
                    case=case,
                    quantity=f"{key} (sum)",
                    mmdet=a.sum().item(),
                    atss_d2=b.sum().item(),
                    rel=diff / scale if scale else (0.0 if diff == 0 else math.inf),
                )
            )
        differ = int((det["labels"] != other["labels"]).sum())
        rows.append(
            dict(
                case=case,
                quantity="labels (sum)",
                mmdet=int(det["labels"].sum()),
                atss_d2=int(other["labels"].sum()),
                rel=differ / n if n else 0.0,
            )
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    def number(x):
        return str(x) if isinstance(x, int) else f"{x:.6f}"

    header = ["case", "quantity", "mmdetection", "atss_d2", "relative difference"]
    body = [
        [r["case"], r["quantity"], number(r["mmdet"]), number(r["atss_d2"]), f"{r['rel']:.2e}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header] + body
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mmdet-python", default=None, help="interpreter with mmdet installed")
    p.add_argument("--seed", type=int, default=0, help="model weights and inputs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="largest relative diff.")
    p.add_argument("--json", default=None, help="write the rows and verdict to this file")
    p.add_argument(
        "opts",
        nargs="*",
        help="atss_d2 config overrides, KEY VALUE ... (e.g. MODEL.ATSS.NUM_POS_NORM total, to "
        "see the check fail)",
    )
    p.add_argument("--mmdet-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mmdet_worker:  # the mmdetection side, in the --mmdet-python interpreter
        return mmdet_worker(*args.mmdet_worker)
    import atss_d2.warning_filters  # noqa: F401  (before detectron2 and fvcore are imported)

    if args.threads:
        torch.set_num_threads(args.threads)
    loss_cases, detection_cases = build_cases(args.seed)
    job = {
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "loss_cases": loss_cases,
        "detection_cases": detection_cases,
    }
    print("running mmdetection ...", flush=True)
    mm, reason = run_mmdet(job, args.mmdet_python)
    if mm is None:
        print(f"mmdetection unavailable ({reason}); {INSTALL_HINT}", file=sys.stderr)
        return 2
    print(f"running atss_d2 (weights converted from mmdetection {mm['version']}) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_atss_d2(mm["state_dict"], mm["version"], tmp, args.opts)
    ours = run_atss_d2(model, loss_cases, detection_cases)
    rows = compare(mm, ours)
    worst = max(r["rel"] for r in rows)
    passed = worst <= args.threshold
    print(
        f"\nATSS R-50-FPN, {NUM_CLASSES} classes, random weights (seed {args.seed}): "
        f"mmdetection {mm['version']} against atss_d2 ({CONFIG}"
        f"{''.join(' ' + o for o in args.opts)}); "
        f"torch threads: {torch.get_num_threads()}"
    )
    if mm["config_matches_shipped"] is not None:
        print(
            f"model settings equal to mmdetection's {SHIPPED_CONFIG}: "
            f"{mm['config_matches_shipped']}"
        )
    print()
    print(format_table(rows))
    verdict = "PASS" if passed else "FAIL"
    print(f"\n{verdict}: largest relative difference {worst:.2e} (threshold {args.threshold:g})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine_info("cpu"),
                    "mmdet_version": mm["version"],
                    "config": CONFIG,
                    "config_matches_shipped": mm["config_matches_shipped"],
                    "command": " ".join(shlex.quote(a) for a in sys.argv),
                    "threshold": args.threshold,
                    "passed": passed,
                    "rows": rows,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
