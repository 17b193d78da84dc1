"""
Shared pieces of the robustness tests: a tiny ATSS config (R-18, 64-channel FPN, one tower conv,
64-96 px images, CPU), tiny image datasets written to a temporary directory, and the repository's
scripts loaded as modules.
"""

import contextlib
import datetime
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.structures import BoxMode
from fvcore.nn import sigmoid_focal_loss_jit
from PIL import Image

from atss_d2 import add_atss_config
from atss_d2.data import ShapesSpec

REPO = Path(__file__).resolve().parents[1]


def load_script(path):
    """A script of the repository (e.g. ``"tools/benchmark.py"``, relative to the repository
    root, or an absolute path) imported as a module named after its file; its
    ``if __name__ == "__main__"`` block does not run."""
    path = Path(path) if Path(path).is_absolute() else REPO / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_atss(num_classes: int = 3, **kwargs):
    """An ATSS without backbone, head or anchor generator (identities), whose loss and
    inference code is called directly with hand-made tensors; ``kwargs`` override the
    constructor's arguments."""
    from torch import nn

    from atss_d2.modeling import ATSS, ATSSBoxCoder, ATSSMatcher

    args = dict(
        backbone=nn.Identity(),
        head=nn.Identity(),
        head_in_features=["p3"],
        anchor_generator=nn.Identity(),
        box_coder=ATSSBoxCoder(),
        matcher=ATSSMatcher(9),
        num_classes=num_classes,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    args.update(kwargs)
    return ATSS(**args)


BASE_CONFIG = REPO / "configs" / "Base-ATSS.yaml"
CLASSES = ("square", "disc")

# The small model of most tests: ResNet-18, 64-channel FPN, one conv per head tower.
SMALL_MODEL_OPTS = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ATSS.NUM_CONVS", "1",
]  # fmt: skip

TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    *SMALL_MODEL_OPTS,
    "MODEL.ATSS.NUM_CLASSES", str(len(CLASSES)),
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "INPUT.RANDOM_FLIP", "none",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
    "DATASETS.TEST", "()",
    "SEED", "0",
]  # fmt: skip


def small_cfg(*extra, device: str = "cpu", num_classes: int = 3):
    """Base-ATSS.yaml with the small model (``SMALL_MODEL_OPTS``) on ``device``, ``num_classes``
    classes; ``extra``: KEY VALUE overrides. For model-level tests (no dataset, no training)."""
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list(
        ["MODEL.DEVICE", device, *SMALL_MODEL_OPTS, "MODEL.ATSS.NUM_CLASSES", str(num_classes)]
        + [str(x) for x in extra]
    )
    return cfg


def tiny_cfg(output_dir, *extra):
    """The tiny config (mutable), writing to ``output_dir``; ``extra``: KEY VALUE overrides."""
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list(TINY_OPTS + ["OUTPUT_DIR", str(output_dir), *extra])
    return cfg


def draw_image(height: int, width: int, boxes: Sequence, seed: int = 0) -> np.ndarray:
    """HWC uint8 RGB noise image with a bright filled rectangle per XYXY box."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[int(y1) : int(y2), int(x1) : int(x2)] = (230, 200, 40)
    return image


def write_png(path: Path, image: np.ndarray, mode: str = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode=mode).save(path)
    return str(path)


def image_dicts(root: Path, num_images: int = 4, size=(64, 80)) -> List[Dict]:
    """``num_images`` detectron2 dataset dicts with 1-2 boxes each, images written as PNG."""
    h, w = size
    dicts = []
    for i in range(num_images):
        boxes = [[4 + 3 * i, 6, 30 + 3 * i, 34]] + ([[40, 30, 70, 60]] if i % 2 else [])
        file_name = write_png(root / f"img{i}.png", draw_image(h, w, boxes, seed=i))
        dicts.append(
            {
                "file_name": file_name,
                "image_id": i,
                "height": h,
                "width": w,
                "annotations": [
                    {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": j % 2, "iscrowd": 0}
                    for j, b in enumerate(boxes)
                ],
            }
        )
    return dicts


def write_coco_json(path: Path, dicts: List[Dict], classes=CLASSES) -> str:
    """A COCO instances json for ``dicts`` (XYXY_ABS boxes; file names relative to the json's
    image directory: their basenames)."""
    images, annotations = [], []
    for d in dicts:
        images.append(
            {
                "id": d["image_id"],
                "file_name": os.path.basename(d["file_name"]),
                "height": d["height"],
                "width": d["width"],
            }
        )
        for a in d["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": d["image_id"],
                    "category_id": a["category_id"] + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": a.get("iscrowd", 0),
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }
    path.write_text(json.dumps(data))
    return str(path)


@contextlib.contextmanager
def registered(name: str, dicts: List[Dict], classes=CLASSES, **metadata):
    """Register ``dicts`` as dataset ``name`` for the duration of the block."""
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=list(classes), **metadata)
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread: on a small, shared CPU the tiny model trains several times
    faster than with a thread per core (no threads waiting on each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def warm_up_scripted_focal_loss(calls: int = 3) -> None:
    """Run fvcore's TorchScript ``sigmoid_focal_loss_jit`` (the ATSS classification loss),
    forward and backward, a few times on a small input.

    TorchScript's profiling executor runs a scripted function unoptimised on its first call(s)
    and then switches for good to an optimised plan whose gradients differ in the last bits. A
    training run is therefore reproducible bit for bit only once that switch has happened: the
    first run in a process differs from every later one with the same seed. Tests that compare
    numbers across runs, or with a measured value, call this first."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(calls):
        logits = torch.randn(7, 3, generator=generator).requires_grad_()
        targets = (torch.rand(7, 3, generator=generator) > 0.5).float()
        sigmoid_focal_loss_jit(logits, targets, alpha=0.25, gamma=2.0, reduction="sum").backward()


class LossRecorder(HookBase):
    """Keeps each iteration's loss dict (as floats) seen by the trainer's storage."""

    def __init__(self):
        self.losses = []

    def after_step(self):
        storage = self.trainer.storage
        self.losses.append(
            {k: v.latest() for k, v in storage.histories().items() if k.startswith("loss_")}
        )


@contextlib.contextmanager
def gloo_process_group(rank: int, world_size: int, rendezvous_file: str, timeout_s: float):
    """Inside a spawned test worker: one torch thread, a gloo process group for the ``with``
    block (destroyed on the way out), its workers meeting through ``rendezvous_file`` (a path
    that does not exist yet, e.g. in the test's tmp_path): no TCP port is picked, so none can be
    taken by another process between picking and binding."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method="file://" + os.path.abspath(rendezvous_file),
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


# Training on the tiny generated Shapes sets below: 64x80 images, batch 4, no loader workers.
TINY_SHAPES_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "80",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "80",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "4",
]  # fmt: skip


def tiny_shapes(empty_fraction: float, seed: int) -> ShapesSpec:
    """Eight 64x80 Shapes images with up to three objects of 12-40 px each."""
    return ShapesSpec(
        num_images=8,
        height=64,
        width=80,
        max_objects=3,
        empty_fraction=empty_fraction,
        min_size=12,
        max_size=40,
        seed=seed,
    )


# Reference formulas for losses computed by hand, one logit at a time.
def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def focal(x: float, t: int, alpha=0.25, gamma=2.0) -> float:
    """Sigmoid focal loss of one logit, Lin et al. 2017: -a_t (1 - p_t)^g log(p_t)."""
    p = sigmoid(x)
    p_t = p if t else 1 - p
    a_t = alpha if t else 1 - alpha
    return -a_t * (1 - p_t) ** gamma * math.log(p_t)


def bce(x: float, t: float) -> float:
    """Binary cross-entropy of one logit x against the target t."""
    p = sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))
