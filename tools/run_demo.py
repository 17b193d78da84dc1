#!/usr/bin/env python
"""
The main job on the built-in dataset (``make demo``): draw the synthetic shapes dataset (once),
train ATSS on it from scratch on the CPU with atss_d2's trainer, evaluate it on
``shapes_val`` with COCOEvaluator, write annotated validation images and the training curves,
and print where everything is, the box AP and the wall time.

    python tools/run_demo.py
    python tools/run_demo.py --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \
        --num-vis 8 SOLVER.MAX_ITER 100 OUTPUT_DIR output/demo_short
"""

import os
import time

_START = time.perf_counter()  # the summary's wall time counts the imports below too
# The training step runs on all cores with no loader process beside it, so OpenMP's default
# spinning at barriers is the fastest on an idle machine (a spin count of 1000 makes the demo's
# bfloat16 step 0.44 s in place of 0.37). When other work competes for the cores, long spins make
# a two-thread run 1.5 to 10 times slower: run `GOMP_SPINCOUNT=1000 make demo` there.

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import atss_d2.warning_filters  # noqa: E402, F401  (before the detectron2 imports)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

import atss_d2  # noqa: E402, F401  (registers the model and the shapes datasets)
from atss_d2.engine import ATSSTrainer, SafePredictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "Shapes" / "atss_R_18_FPN_shapes.yaml"
logger = logging.getLogger("atss_d2.demo")


def load_script(path: Path):
    """Import a script of the repository (train_net.py, tools/plot_metrics.py: not part of
    the package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What a run of this demo writes in OUTPUT_DIR (detectron2's trainer and this script).
DEMO_OUTPUTS = (
    "config.yaml",
    "log.txt",
    "metrics.json",
    "events.out.tfevents.*",
    "training_curves.png",
    "last_checkpoint",
    "model_*.pth",
    "inference",
    "vis",
)
# Removed before a run, so that curves and images are those of this run only (detectron2's
# JSONWriter appends to metrics.json).
_CLEARED = ("metrics.json", "events.out.tfevents.*", "training_curves.png", "last_checkpoint")


class ForeignOutputDirError(RuntimeError):
    """OUTPUT_DIR holds files this demo did not write."""


def clear_previous_run(output_dir: str) -> None:
    """
    Remove what an earlier run of this demo wrote in ``output_dir``. A directory holding
    anything else (another run's or a user's files) is left untouched and refused with
    :class:`ForeignOutputDirError`: the demo never deletes files it did not create.
    """
    if not os.path.isdir(output_dir):
        return
    foreign = [
        name
        for name in sorted(os.listdir(output_dir))
        if not any(fnmatch.fnmatch(name, pattern) for pattern in DEMO_OUTPUTS)
    ]
    if foreign:
        raise ForeignOutputDirError(
            f"OUTPUT_DIR {output_dir} holds files this demo did not write (e.g. {foreign[:3]}); "
            "the demo clears its own earlier outputs before a run and deletes nothing else. "
            "Choose another directory: python tools/run_demo.py OUTPUT_DIR output/demo_2"
        )
    for pattern in _CLEARED + ("model_*.pth",):
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            os.remove(path)
    for sub in ("inference", "vis"):
        shutil.rmtree(os.path.join(output_dir, sub), ignore_errors=True)


def visualize(cfg, dataset_name: str, out_dir: str, num_images: int, threshold: float):
    """Write ``num_images`` images of ``dataset_name``: ground truth (left) beside the
    predictions of ``cfg.MODEL.WEIGHTS`` with score >= ``threshold`` (right)."""
    os.makedirs(out_dir, exist_ok=True)
    predictor = SafePredictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        bgr = cv2.imread(record["file_name"])
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= threshold]
        rgb = bgr[:, :, ::-1]
        # Upscaled 3x: the images are small and the labels must stay readable.
        gt = Visualizer(rgb, metadata, scale=3.0, instance_mode=ColorMode.SEGMENTATION)
        gt = gt.draw_dataset_dict(record).get_image()
        pred = Visualizer(rgb, metadata, scale=3.0, instance_mode=ColorMode.SEGMENTATION)
        pred = pred.draw_instance_predictions(instances).get_image()
        gap = np.full((gt.shape[0], 6, 3), 255, np.uint8)
        path = os.path.join(out_dir, "val_" + os.path.basename(record["file_name"]))
        cv2.imwrite(path, np.concatenate([gt, gap, pred], axis=1)[:, :, ::-1])
        paths.append(path)
    return paths


def get_parser():
    parser = argparse.ArgumentParser(description="Train, evaluate and visualise ATSS on shapes.")
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), metavar="FILE")
    parser.add_argument("--num-vis", type=int, default=16, help="validation images to draw")
    parser.add_argument(
        "--vis-threshold", type=float, default=0.4, help="score threshold of the drawn predictions"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def dataset_files(name: str) -> str:
    """Where a registered dataset's json is (known once it was loaded)."""
    return MetadataCatalog.get(name).get("json_file", f"(registered as {name!r})")


def main(argv=None):
    args = get_parser().parse_args(argv)
    train_net = load_script(ROOT / "train_net.py")
    plot_metrics = load_script(ROOT / "tools" / "plot_metrics.py").plot_metrics
    cfg = train_net.setup(
        train_net.get_parser().parse_args(["--config-file", args.config_file, *args.opts])
    )
    setup_logger(cfg.OUTPUT_DIR, name="atss_d2", abbrev_name="atss_d2")  # log.txt + stdout
    output_dir = cfg.OUTPUT_DIR
    clear_previous_run(output_dir)

    # 1. The dataset: drawn on first use (the built-in shapes), then read from disk.
    t = time.perf_counter()
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        logger.info(f"Dataset {name}: {len(DatasetCatalog.get(name))} images")
    data_s = time.perf_counter() - t

    # 2. Training; detectron2's EvalHook evaluates on DATASETS.TEST when it ends.
    t = time.perf_counter()
    trainer = ATSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    train_s = time.perf_counter() - t
    results = getattr(trainer, "_last_eval_results", None) or {}
    del trainer

    # 3. Pictures: annotated validation images and the training curves.
    t = time.perf_counter()
    vis_cfg = cfg.clone()
    vis_cfg.defrost()
    vis_cfg.MODEL.WEIGHTS = os.path.join(output_dir, "model_final.pth")
    vis_dir = os.path.join(output_dir, "vis")
    vis_paths = visualize(vis_cfg, cfg.DATASETS.TEST[0], vis_dir, args.num_vis, args.vis_threshold)
    curves = plot_metrics(output_dir)
    vis_s = time.perf_counter() - t

    total_s = time.perf_counter() - _START
    test_name = cfg.DATASETS.TEST[0]
    bbox = results.get(test_name, results).get("bbox", {})
    others = ", ".join(
        f"{k} {bbox[k]:.1f}"
        for k in ("AP50", "AP75", "APs", "APm", "APl")
        if k in bbox and not math.isnan(bbox[k])
    )
    lines = [
        "",
        "=" * 78,
        "ATSS demo: done",
        f"  train data     {', '.join(dataset_files(n) for n in cfg.DATASETS.TRAIN)}",
        f"  test data      {dataset_files(test_name)}",
        f"  run directory  {os.path.abspath(output_dir)}/",
        "    config.yaml, log.txt, metrics.json, inference/ (COCO results), model_final.pth",
        f"  curves         {curves}",
        f"  images         {len(vis_paths)} in {vis_dir}/ (left: ground truth, right: "
        f"detections with score >= {args.vis_threshold})",
        f"  box AP         {bbox.get('AP', float('nan')):.1f} on {test_name} (COCO AP@[.5:.95]); "
        + others,
        f"  wall time      {total_s / 60:.1f} min ({total_s:.0f} s, from start-up): data "
        f"{data_s:.0f} s, training + evaluation {train_s:.0f} s, pictures {vis_s:.0f} s; "
        f"{torch.get_num_threads()} torch threads",
        "=" * 78,
    ]
    print("\n".join(lines), flush=True)
    return results


if __name__ == "__main__":
    try:
        main()
    except ForeignOutputDirError as e:
        sys.exit(f"run_demo.py: error: {e}")
