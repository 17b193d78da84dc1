#!/usr/bin/env python
"""
ATSS against detectron2's RetinaNet and FCOS at an equal training budget: the same backbone,
data, solver and number of iterations, each model evaluated with COCO AP.

    python tools/compare_detectors.py                        # the shapes config, its MAX_ITER
    python tools/compare_detectors.py --iters 300 --plot --out output/compare
    python tools/compare_detectors.py --config-file configs/Custom/atss_R_18_FPN_cpu.yaml \\
        --coco-dataset my_train train.json images/ --coco-dataset my_val val.json images/ \\
        --train-datasets my_train --test-dataset my_val MODEL.ATSS.NUM_CLASSES 5
    python tools/compare_detectors.py --voc-dataset my_voc Annotations/ JPEGImages/ \\
        --classes cat,dog --train-datasets my_voc --test-dataset my_voc MODEL.ATSS.NUM_CLASSES 2

Everything is derived from the ATSS config (``--config-file``, default the shapes config):

- Backbone: ``MODEL.BACKBONE`` / ``RESNETS`` / ``FPN`` (atss_d2's ResNet + FPN builder, levels
  ``MODEL.ATSS.IN_FEATURES``), built the same way and from the same seed for every model.
- Head: ``MODEL.ATSS.NUM_CONVS`` convolutions of ``FPN.OUT_CHANNELS`` channels per tower, norm
  ``MODEL.ATSS.NORM``, prior ``MODEL.ATSS.PRIOR_PROB``, for all three (detectron2's stock
  RetinaNet has no norm; here it gets the same GroupNorm as the others).
- RetinaNet: detectron2's ``RetinaNet`` and ``RetinaNetHead``; anchors of the ATSS config's sizes
  times 2^0, 2^(1/3), 2^(2/3), aspect ratios 0.5, 1, 2 (9 per location, RetinaNet's standard);
  matcher, box transform and loss from detectron2's ``MODEL.RETINANET`` defaults.
- FCOS: detectron2's ``FCOS`` and ``FCOSHead`` with their defaults (centre sampling 1.5).
- Inference: score threshold, top-k candidates and NMS threshold of ``MODEL.ATSS``, and
  ``TEST.DETECTIONS_PER_IMAGE``, for all three (FCOS's own default threshold is 0.2).
- Data and solver: the config's datasets, input sizes, augmentation, optimizer, schedule and
  batch; ``--iters`` sets ``SOLVER.MAX_ITER`` for all models.
- Empty images: detectron2 0.6's FCOS fails on a training image without boxes, so the baselines
  always train with ``DATALOADER.FILTER_EMPTY_ANNOTATIONS True``; ATSS keeps the config's value
  (which handles empty images). The value used is recorded per model.
- Precision: on the CPU all three train in float32 (``SOLVER.AMP.ENABLED`` off): detectron2
  0.6's RetinaNet and FCOS fail under bfloat16 autocast.

Evaluation: atss_d2's COCO evaluator (detectron2's ``COCOEvaluator`` with the pure-Python COCO
API when detectron2's compiled ops are missing). Writes ``results.json`` (and ``compare.png``
with ``--plot``) under ``--out``; each model trains in ``--out/<model>``.
"""

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model as build_d2_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import atss_d2
from atss_d2.data import add_dataset_arguments, register_datasets_from_args
from atss_d2.engine import ATSSTrainer, merge_config_file, merge_config_opts
from atss_d2.modeling.backbone import build_atss_resnet_fpn_backbone
from atss_d2.solver import build_optimizer
from atss_d2.utils import has_compiled_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/, for bench_common
from bench_common import group_norm, machine_info  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "Shapes", "atss_R_18_FPN_shapes.yaml")
MODELS = ("atss", "retinanet", "fcos")
META_ARCHITECTURES = {"atss": "ATSS", "retinanet": "RetinaNet", "fcos": "FCOS"}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

logger = logging.getLogger("atss_d2.compare")


def head_norm(norm: str):
    """The head's norm for detectron2's heads: "GN" becomes :func:`bench_common.group_norm`
    (what ``norm="GN"`` builds, without detectron2 0.6's failing GroupNorm(32, 1) probe)."""
    return group_norm if norm == "GN" else norm


def _backbone(cfg: CfgNode):
    return build_atss_resnet_fpn_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def _head_kwargs(cfg: CfgNode, backbone) -> dict:
    features = cfg.MODEL.ATSS.IN_FEATURES
    shapes = backbone.output_shape()
    return dict(
        input_shape=[shapes[f] for f in features],
        num_classes=cfg.MODEL.ATSS.NUM_CLASSES,
        conv_dims=[cfg.MODEL.FPN.OUT_CHANNELS] * cfg.MODEL.ATSS.NUM_CONVS,
        norm=head_norm(cfg.MODEL.ATSS.NORM),
        prior_prob=cfg.MODEL.ATSS.PRIOR_PROB,
    )


def _test_kwargs(cfg: CfgNode) -> dict:
    return dict(
        test_score_thresh=cfg.MODEL.ATSS.SCORE_THRESH_TEST,
        test_topk_candidates=cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST,
        test_nms_thresh=cfg.MODEL.ATSS.NMS_THRESH_TEST,
        max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    )


def retinanet_anchor_sizes(atss_sizes: Sequence[Sequence[float]]) -> List[List[float]]:
    """RetinaNet's 3 scales per level (x, x * 2^(1/3), x * 2^(2/3)) from the ATSS sizes."""
    return [[s * 2 ** (i / 3) for i in range(3) for s in level] for level in atss_sizes]


def build_retinanet(cfg: CfgNode) -> RetinaNet:
    backbone = _backbone(cfg)
    features = cfg.MODEL.ATSS.IN_FEATURES
    shapes = backbone.output_shape()
    anchor_generator = DefaultAnchorGenerator(
        sizes=retinanet_anchor_sizes(cfg.MODEL.ANCHOR_GENERATOR.SIZES),
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[shapes[f].stride for f in features],
        offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
    )
    r = cfg.MODEL.RETINANET  # detectron2's defaults (the ATSS config does not change them)
    head = RetinaNetHead(**_head_kwargs(cfg, backbone), num_anchors=anchor_generator.num_anchors[0])
    return RetinaNet(
        backbone=backbone,
        head=head,
        head_in_features=features,
        anchor_generator=anchor_generator,
        box2box_transform=Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
        anchor_matcher=Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
        num_classes=cfg.MODEL.ATSS.NUM_CLASSES,
        focal_loss_alpha=r.FOCAL_LOSS_ALPHA,
        focal_loss_gamma=r.FOCAL_LOSS_GAMMA,
        smooth_l1_beta=r.SMOOTH_L1_LOSS_BETA,
        box_reg_loss_type=r.BBOX_REG_LOSS_TYPE,
        input_format=cfg.INPUT.FORMAT,
        **_test_kwargs(cfg),
    )


def build_fcos(cfg: CfgNode) -> FCOS:
    backbone = _backbone(cfg)
    return FCOS(
        backbone=backbone,
        head=FCOSHead(**_head_kwargs(cfg, backbone)),
        head_in_features=cfg.MODEL.ATSS.IN_FEATURES,
        num_classes=cfg.MODEL.ATSS.NUM_CLASSES,
        **_test_kwargs(cfg),
    )


class CompareTrainer(ATSSTrainer):
    """ATSSTrainer (data, checkpoints, evaluator) building the model named by
    ``MODEL.META_ARCHITECTURE``: "ATSS" from the config, "RetinaNet" / "FCOS" with
    :func:`build_retinanet` / :func:`build_fcos`; optimizer from ``SOLVER.OPTIMIZER``."""

    @classmethod
    def build_model(cls, cfg):
        arch = cfg.MODEL.META_ARCHITECTURE
        if arch == "RetinaNet":
            model = build_retinanet(cfg).to(cfg.MODEL.DEVICE)
        elif arch == "FCOS":
            model = build_fcos(cfg).to(cfg.MODEL.DEVICE)
        else:
            model = build_d2_model(cfg)
        logger.info(f"{arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)


def model_config(base: CfgNode, name: str, out_dir: str) -> CfgNode:
    """The training config of one model: ``base`` with its meta-architecture, its output folder
    and, for the baselines, empty images filtered out. No test set: evaluation is run (and
    timed) apart from training."""
    cfg = base.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = META_ARCHITECTURES[name]
    cfg.OUTPUT_DIR = os.path.join(out_dir, name)
    if name != "atss":
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # detectron2 0.6's FCOS needs boxes
    cfg.TEST.EVAL_PERIOD = 0
    if torch.device(cfg.MODEL.DEVICE).type == "cpu":
        # detectron2 0.6's RetinaNet and FCOS fail under the CPU's bfloat16 autocast (their
        # label assignment writes float32 into bfloat16 tensors): all three train in float32.
        cfg.SOLVER.AMP.ENABLED = False
    cfg.freeze()
    return cfg


def train_and_evaluate(base: CfgNode, name: str, out_dir: str, test_dataset: str) -> Dict:
    """Train one model from scratch (seeded with ``SEED``) and evaluate it on ``test_dataset``."""
    cfg = model_config(base, name, out_dir)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()
    train_cfg.freeze()
    trainer = CompareTrainer(train_cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start

    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.DATASETS.TEST = (test_dataset,)
    eval_cfg.freeze()
    start = time.perf_counter()
    # The evaluator is built by test() after the test loader has loaded the dataset (which sets
    # the shapes datasets' metadata json_file; an evaluator built first would set another one).
    results = CompareTrainer.test(eval_cfg, trainer.model)
    eval_s = time.perf_counter() - start

    # detectron2's IterationTimer records "time" only after its 3 warm-up iterations.
    histories = trainer.storage.histories()
    iter_times = [t for t, _ in histories["time"].values()] if "time" in histories else []
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    bbox = results["bbox"]
    return {
        "model": name,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "class": f"{type(trainer.model).__module__}.{type(trainer.model).__qualname__}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "backbone_parameters": sum(p.numel() for p in trainer.model.backbone.parameters()),
        "filter_empty_annotations": cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        **{k: bbox.get(k, float("nan")) for k in METRICS},
        "bbox": dict(bbox),
        "iters": cfg.SOLVER.MAX_ITER,
        "train_s": train_s,
        "s_per_iter_median": sorted(iter_times)[len(iter_times) // 2] if iter_times else None,
        "final_total_loss": losses[-1] if losses else None,
        "eval_s": eval_s,
    }


def format_table(rows: List[Dict]) -> str:
    header = ["model", *METRICS, "train_s", "s/iter"]
    lines = [header]
    for r in rows:
        s_iter = r["s_per_iter_median"]
        lines.append(
            [r["model"]]
            + [f"{r[k]:.1f}" for k in METRICS]
            + [f"{r['train_s']:.0f}", "-" if s_iter is None else f"{s_iter:.3f}"]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [" | ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join([out[0], "-+-".join("-" * w for w in widths), *out[1:]])


def plot(rows: List[Dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Metrics the ground truth leaves undefined (NaN for every model, e.g. APl without large
    # objects) are left out rather than drawn as 0.
    metrics = [k for k in METRICS if any(not math.isnan(r[k]) for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
        values = [0.0 if math.isnan(r[k]) else r[k] for k in metrics]
        bars = ax.bar(xs, values, width, label=f"{r['model']} ({r['train_s']:.0f} s)")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("COCO AP (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_base_config(args) -> CfgNode:
    cfg = get_cfg()
    atss_d2.add_atss_config(cfg)
    merge_config_file(cfg, args.config_file)
    merge_config_opts(cfg, args.opts)
    if args.iters is not None:
        cfg.SOLVER.MAX_ITER = args.iters
    if args.train_datasets:
        cfg.DATASETS.TRAIN = tuple(args.train_datasets.split(","))
    if args.test_dataset:
        cfg.DATASETS.TEST = (args.test_dataset,)
    if not cfg.DATASETS.TEST:
        raise SystemExit("compare_detectors.py: no test dataset (DATASETS.TEST / --test-dataset)")
    # Periodic checkpoints are not needed to compare; only model_final.pth is written.
    cfg.SOLVER.CHECKPOINT_PERIOD = max(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER + 1)
    cfg.freeze()
    return cfg


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="the ATSS config")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--iters", type=int, help="iterations per model (default: MAX_ITER)")
    parser.add_argument("--out", default="output/compare", help="output folder")
    parser.add_argument("--train-datasets", help="comma-separated registered datasets")
    parser.add_argument("--test-dataset", help="registered dataset to evaluate on")
    add_dataset_arguments(parser)  # --coco-dataset, --voc-dataset, --classes
    parser.add_argument("--plot", action="store_true", help="also write compare.png")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the comparison; returns what ``results.json`` holds."""
    args = get_parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"compare_detectors.py: unknown models {unknown}; choose from {MODELS}")
    register_datasets_from_args(args.coco_dataset, args.voc_dataset, args.classes)
    setup_logger(name="detectron2")
    setup_logger(name="atss_d2")
    base = build_base_config(args)
    test_dataset = base.DATASETS.TEST[0]
    os.makedirs(args.out, exist_ok=True)

    report = {
        "config_file": os.path.relpath(args.config_file, REPO),
        "overrides": list(args.opts),
        "train_datasets": list(base.DATASETS.TRAIN),
        "test_dataset": test_dataset,
        "iters": base.SOLVER.MAX_ITER,
        "ims_per_batch": base.SOLVER.IMS_PER_BATCH,
        "compiled_ops": has_compiled_ops(),
        "machine": machine_info(base.MODEL.DEVICE),
        "results": [],
    }
    for name in models:
        logger.info(f"=== {name}: {base.SOLVER.MAX_ITER} iterations ===")
        report["results"].append(train_and_evaluate(base, name, args.out, test_dataset))
        # Written after every model, so that an interrupted run keeps what it finished.
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(report, f, indent=2)
    rows = report["results"]
    table = format_table(rows)
    print(f"\n{base.SOLVER.MAX_ITER} iterations each, evaluated on {test_dataset}:\n{table}")
    if args.plot:
        title = f"{', '.join(base.DATASETS.TRAIN)} -> {test_dataset}, {base.SOLVER.MAX_ITER} iters"
        plot(rows, os.path.join(args.out, "compare.png"), title)
    report["table"] = table
    return report


if __name__ == "__main__":
    main()
