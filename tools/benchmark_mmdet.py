#!/usr/bin/env python
"""
atss_d2 against mmdetection 3.x on the same device, in one process: inference throughput and
the peak memory (and time) of a mixed-precision training step of ATSS R-50-FPN, 80 classes,
random weights in both.

    PYTHONPATH=/tmp/mmpkgs python tools/benchmark_mmdet.py --device cuda
    PYTHONPATH=/tmp/mmpkgs python tools/benchmark_mmdet.py --quick --threads 1   # CPU smoke run
    PYTHONPATH=/tmp/mmpkgs python tools/benchmark_mmdet.py --infer-batch 1 2 4 --iters 20

The two models:
- atss_d2: ``configs/COCO-Detection/atss_R_50_FPN_1x.yaml`` as shipped, built by detectron2's
  ``build_model``, no weights loaded: its backbone norm is ``FrozenStatsBN`` (statistics
  frozen, affine parameters trained), what mmdetection's ``norm_eval`` BatchNorm with
  ``requires_grad=True`` computes.
- mmdetection: its own ``configs/atss/atss_r50_fpn_1x_coco.py`` (read from the installed
  package with mmengine's ``Config`` and built by mmdet's ``MODELS`` registry), with the
  ImageNet ``init_cfg`` of the backbone removed (nothing is downloaded), then ``init_weights()``.
  Its backbone is BatchNorm in eval mode with trainable affine parameters (``norm_eval``), as
  shipped.

What is timed is the whole path each library's users run:
- Inference (eval, ``torch.no_grad``): atss_d2 ``model(batched_inputs)`` (normalise, pad to 32,
  backbone, head, decode, NMS, rescale to the input size); mmdetection
  ``model.test_step({"inputs": [...], "data_samples": [...]})`` (its ``DetDataPreprocessor``
  normalises, converts BGR to RGB and pads to 32; then ``predict`` with rescale). Both get the
  same uint8 images (RGB for atss_d2, the same pixels as BGR for mmdetection), already on the
  device, ``--infer-batch`` images per call. Reported: ms per image and images/s of the median
  call, and the detections per image. The test settings are checked to be equal before timing
  (score threshold 0.05 on the class probability, top 1000 candidates per level, class-aware
  NMS at IoU 0.6, 100 detections; the tool exits if they differ).
- ``--scores dense`` (default): the classification and centerness biases are set to 0 in both
  (atss_d2 ``head.cls_score`` / ``head.centerness``, mmdetection ``bbox_head.atss_cls`` /
  ``bbox_head.atss_centerness``): every (anchor, class) pair passes the threshold, so both keep
  their full top 1000 per level and NMS sees the same load (100 detections per image). With
  ``--scores prior`` the weights stay as initialised (p_cls ~ 0.01: no detections).
- Training: one step (forward, backward, SGD with momentum) on ``--train-batch`` images with
  ``--num-gt`` random boxes each, as detectron2's ``AMPTrainer`` and mmengine's
  ``AmpOptimWrapper`` run it: the forward pass (mmdetection's data preprocessor included) under
  ``torch.autocast`` (CUDA: float16, with a ``GradScaler``; CPU: bfloat16, or float32 where a
  model fails in bfloat16; the JSON records which), losses summed (mmdetection:
  ``model.parse_losses``), backward and step outside it. atss_d2: ``model(batched_inputs)`` with
  ``Instances`` in an ``EventStorage``; mmdetection: ``model.loss(inputs, data_samples)`` after
  ``data_preprocessor(..., training=True)``.
- Peak memory of one training step after the timed ones, with the gradients freed before it:
  CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before (weights and
  optimizer state excluded; activations, gradients and temporaries included); CPU, peak RSS
  above the RSS before (``bench_common.PeakMemory``).
- Timing: the two models alternate call by call (round robin) so that load changes on a shared
  machine hit both alike; median of ``--iters`` calls after ``--warmup``, with a device
  synchronisation around each call.

Targets, marked met or MISSED in the report: inference images/s atss_d2 / mmdetection >= 1.00
at every batch size; training-step peak memory atss_d2 / mmdetection <= 1.00 (the step time
ratio is reported without a target).

mmdetection is not a dependency of atss_d2; the tool exits with the install commands when it
is not importable. With mmcv-lite (no compiled ops), the two mmcv ops ATSS needs are emulated
here in PyTorch, which changes what is measured on mmdetection's side (the report says so and
the JSON lists the ops and how often each ran): ``nms`` by ``torchvision.ops.nms`` (the same
greedy suppression; offset 0 only) and, used by mmdetection's ``FocalLoss`` on CUDA only,
``sigmoid_focal_loss_forward`` / ``_backward`` by the same elementwise formulas in PyTorch
(float32, in chunks of 2^20 elements: a few MiB of temporaries where the compiled kernel has
none, and a few more kernel launches). With the full mmcv installed, its compiled ops are used.
"""

import argparse
import importlib.util
import json
import logging
import os
import shlex
import sys
import warnings
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: bench_common, benchmark
from bench_common import (  # noqa: E402
    PeakMemory,
    machine_info,
    median,
    mmcv_ext_placeholder,
)
from benchmark import (  # noqa: E402
    dense_scores,
    make_inputs,
    parse_size,
    ratio,
    round_robin,
    to_device,
)
from check_mmdet_parity import INSTALL_HINT, _torchvision_nms  # noqa: E402

MIB = 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDET_CONFIG = "atss/atss_r50_fpn_1x_coco.py"  # under the installed mmdet's .mim/configs
# Test settings both models must have (the references' ATSS test settings).
TEST_SETTINGS = {"score_thr": 0.05, "nms_pre": 1000, "nms_iou": 0.6, "max_per_img": 100}
# Targets: inference images/s ratio atss_d2 / mmdet at least this; training peak memory ratio
# at most this.
TARGET_FPS_RATIO = 1.00
TARGET_TRAIN_RATIO = 1.00
EMULATED_NOTE = "mmcv ops nms/sigmoid_focal_loss emulated in PyTorch (mmcv-lite)"
COMPILED_NOTE = "mmcv compiled ops used (full mmcv installed)"
QUICK = {
    "size": "256x320",
    "infer_batch": [1, 2],
    "train_size": "256x320",
    "warmup": 1,
    "iters": 2,
}


# --------------------------------------------------------------------------------------------
# mmcv ops emulated for mmcv-lite
# --------------------------------------------------------------------------------------------
# How often each emulated op ran in this process (the JSON records it).
EMULATED_CALLS: Dict[str, int] = {}
# Elements per chunk of the emulated focal loss: its float32 temporaries stay a few MiB each
# (mmcv's compiled kernel has none), so they barely move mmdetection's peak memory.
FOCAL_CHUNK = 1 << 20


def _count(name: str) -> None:
    EMULATED_CALLS[name] = EMULATED_CALLS.get(name, 0) + 1


def _focal_chunks(input, target, weight):
    """Row chunks of the focal loss inputs: (rows, logits in float32 or wider, mask of the
    target class)."""
    if weight is not None and weight.numel() > 0:
        raise NotImplementedError(
            "sigmoid_focal_loss with class weights (mmcv-lite emulation of this tool; "
            "mmdetection's FocalLoss passes none)"
        )
    num, classes = input.shape
    step = max(1, FOCAL_CHUNK // max(classes, 1))
    index = torch.arange(classes, device=input.device)
    dtype = torch.promote_types(input.dtype, torch.float32)
    for start in range(0, num, step):
        rows = slice(start, start + step)
        # target == num_classes (background): no class is positive.
        yield rows, input[rows].to(dtype), target[rows].view(-1, 1) == index


def sigmoid_focal_loss_forward(input, target, weight, output, gamma: float, alpha: float):
    """
    mmcv's ``sigmoid_focal_loss_forward`` kernel in PyTorch: the unreduced sigmoid focal loss
    of logits ``input`` (N, C) against class indices ``target`` (N,) (``C`` = background),
    written into ``output`` (N, C). With p = sigmoid(x):

        target class:  -alpha * (1 - p)^gamma * log(p)
        other classes: -(1 - alpha) * p^gamma * log(1 - p)

    Computed in float32 (at least), with log(p) = logsigmoid(x), log(1 - p) = logsigmoid(-x),
    :data:`FOCAL_CHUNK` elements at a time.
    """
    _count("sigmoid_focal_loss_forward")
    for rows, x, positive in _focal_chunks(input, target, weight):
        p = torch.sigmoid(x)
        loss_pos = -alpha * (1 - p).pow(gamma) * F.logsigmoid(x)
        loss_neg = -(1 - alpha) * p.pow(gamma) * F.logsigmoid(-x)
        output[rows] = torch.where(positive, loss_pos, loss_neg)


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma: float, alpha: float):
    """
    mmcv's ``sigmoid_focal_loss_backward`` kernel in PyTorch: d loss / d x of
    :func:`sigmoid_focal_loss_forward`, elementwise, written into ``grad_input`` (N, C) (mmcv
    multiplies it by the incoming gradient afterwards). With p = sigmoid(x), dp/dx = p(1 - p):

        target class:  d/dx [-a (1-p)^g log p]
                       = -a [-g (1-p)^(g-1) p(1-p) log p + (1-p)^g (1-p)]
                       = -a (1-p)^g [(1 - p) - g p log p]
        other classes: d/dx [-(1-a) p^g log(1-p)]
                       = -(1-a) [g p^(g-1) p(1-p) log(1-p) - p^g p]
                       = -(1-a) p^g [g (1-p) log(1-p) - p]
    """
    _count("sigmoid_focal_loss_backward")
    for rows, x, positive in _focal_chunks(input, target, weight):
        p = torch.sigmoid(x)
        grad_pos = -alpha * (1 - p).pow(gamma) * ((1 - p) - gamma * p * F.logsigmoid(x))
        grad_neg = -(1 - alpha) * p.pow(gamma) * (gamma * (1 - p) * F.logsigmoid(-x) - p)
        grad_input[rows] = torch.where(positive, grad_pos, grad_neg)


def emulated_nms(bboxes, scores, iou_threshold: float, offset: int = 0):
    """mmcv's ``nms`` kernel: indices of the boxes kept by greedy NMS, by decreasing score
    (``torchvision.ops.nms``; offset 0 only, else NotImplementedError)."""
    _count("nms")
    return _torchvision_nms(bboxes, scores, iou_threshold, offset=offset)


EMULATED_OPS = {
    "nms": emulated_nms,
    "sigmoid_focal_loss_forward": sigmoid_focal_loss_forward,
    "sigmoid_focal_loss_backward": sigmoid_focal_loss_backward,
}


def install_emulated_ops() -> List[str]:
    """With mmcv-lite, put :data:`EMULATED_OPS` into the placeholder ``mmcv._ext`` (before
    mmdetection is imported); returns their names, or [] when mmcv's compiled ops are
    installed (they are used)."""
    placeholder = mmcv_ext_placeholder()
    if placeholder is None:
        return []
    for name, op in EMULATED_OPS.items():
        setattr(placeholder, name, op)
    return list(EMULATED_OPS)


def install_hint() -> str:
    """How to install mmdetection for this tool (the pip command of
    ``tools/check_mmdet_parity.py``)."""
    pip = next(line for line in INSTALL_HINT.splitlines() if "pip install --target" in line)
    return (
        "install it outside the project's venv, without a second torch, and run the tool with "
        f"it on the path:\n{pip}\n  PYTHONPATH=/tmp/mmpkgs python tools/benchmark_mmdet.py"
    )


def import_mmdet() -> Dict[str, object]:
    """Import mmdetection (mmcv ops emulated where needed) and register its modules; returns
    the versions and the emulated ops. Exits with the install commands when it is missing."""
    if importlib.util.find_spec("mmdet") is None:
        raise SystemExit(f"mmdet is not importable by {sys.executable}; {install_hint()}")
    emulated = install_emulated_ops()
    try:
        import mmcv
        import mmdet
        import mmengine
        from mmdet.utils import register_all_modules
    except ImportError as e:
        raise SystemExit(f"mmdet is installed but fails to import ({e}); {install_hint()}") from e
    register_all_modules()
    return {
        "versions": {
            "mmdet": mmdet.__version__,
            "mmengine": mmengine.__version__,
            "mmcv": mmcv.__version__,
        },
        "emulated_ops": emulated,
    }


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def build_atss_d2(device: str):
    """atss_d2's R-50 1x model as its config ships, random weights; returns the model and its
    test settings."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from atss_d2 import add_atss_config

    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    settings = {
        "score_thr": cfg.MODEL.ATSS.SCORE_THRESH_TEST,
        "nms_pre": cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST,
        "nms_iou": cfg.MODEL.ATSS.NMS_THRESH_TEST,
        "max_per_img": cfg.TEST.DETECTIONS_PER_IMAGE,
    }
    return model, settings


def drop_pretrained(cfg, path: str = "model") -> List[str]:
    """Remove, in place, every ``init_cfg`` of type ``Pretrained`` and every ``pretrained``
    key from the nested config ``cfg``; returns the dotted paths removed."""
    removed = []
    if isinstance(cfg, dict):
        init = cfg.get("init_cfg")
        inits = init if isinstance(init, (list, tuple)) else [init]
        if any(isinstance(i, dict) and i.get("type") == "Pretrained" for i in inits):
            cfg["init_cfg"] = None
            removed.append(f"{path}.init_cfg")
        if cfg.get("pretrained"):
            cfg["pretrained"] = None
            removed.append(f"{path}.pretrained")
        for key, value in cfg.items():
            removed += drop_pretrained(value, f"{path}.{key}")
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            removed += drop_pretrained(value, f"{path}[{i}]")
    return removed


def build_mmdet(device: str):
    """mmdetection's ATSS from its shipped config, pretrained initialisation removed, random
    weights; returns the model, its test settings and a record of the config."""
    import mmdet
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", MMDET_CONFIG)
    if not os.path.isfile(path):
        raise SystemExit(f"the installed mmdet ships no {MMDET_CONFIG} (looked for {path})")
    model_cfg = Config.fromfile(path).model
    removed = drop_pretrained(model_cfg)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor
    with warnings.catch_warnings():
        # AnchorHead's own use of its deprecated ``num_anchors``.
        warnings.filterwarnings("ignore", "DeprecationWarning: `num_anchors`", UserWarning)
        model = MODELS.build(model_cfg)
    model.init_weights()
    model.to(device)
    test = model_cfg.test_cfg
    if test.nms.get("type", "nms") != "nms" or test.get("min_bbox_size", 0) != 0:
        raise SystemExit(f"{MMDET_CONFIG}: unexpected test_cfg {test}")
    settings = {
        "score_thr": test.score_thr,
        "nms_pre": test.nms_pre,
        "nms_iou": test.nms.iou_threshold,
        "max_per_img": test.max_per_img,
    }
    record = {"path": path, "removed": removed, "test_cfg": test.to_dict()}
    return model, settings, record


def dense_scores_mmdet(model) -> None:
    """mmdetection's classification and centerness biases to 0 (``dense_scores`` of
    ``tools/benchmark.py`` for atss_d2)."""
    with torch.no_grad():
        for name in ("atss_cls", "atss_centerness"):
            getattr(model.bbox_head, name).bias.zero_()


def check_test_settings(ours: dict, theirs: dict) -> None:
    """Exit unless both models have :data:`TEST_SETTINGS`."""
    for name, settings in (("atss_d2", ours), ("mmdet", theirs)):
        if settings != TEST_SETTINGS:
            raise SystemExit(
                f"{name} test settings {settings} differ from {TEST_SETTINGS}: the inference "
                "comparison would not be like for like"
            )


# --------------------------------------------------------------------------------------------
# Inputs and steps
# --------------------------------------------------------------------------------------------
def mmdet_inputs(inputs: List[dict]) -> dict:
    """The same images and boxes as mmdetection's ``test_step`` / data preprocessor take them:
    ``{"inputs": [uint8 (3, H, W) BGR], "data_samples": [DetDataSample]}``, metainfo of an
    image loaded at its size (scale factor 1), ``gt_instances`` where ``inputs`` have them."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    images, samples = [], []
    for item in inputs:
        h, w = item["image"].shape[1:]
        shape = (int(h), int(w))
        sample = DetDataSample(
            metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1, 1))
        )
        if "instances" in item:
            inst = item["instances"]
            sample.gt_instances = InstanceData(bboxes=inst.gt_boxes.tensor, labels=inst.gt_classes)
        samples.append(sample)
        images.append(item["image"].flip(0).contiguous())  # DetDataPreprocessor(bgr_to_rgb)
    return {"inputs": images, "data_samples": samples}


class D2Infer:
    """atss_d2 inference as its users run it; ``detections()``: per image, of the last call."""

    def __init__(self, model, inputs: List[dict]):
        self.model, self.inputs, self.last = model, inputs, None

    def __call__(self):
        self.model.eval()
        with torch.no_grad():
            self.last = self.model(self.inputs)

    def detections(self) -> List[int]:
        return [len(x["instances"]) for x in self.last]

    def padded_input(self) -> List[int]:
        with torch.no_grad():
            return list(self.model.preprocess_image(self.inputs).tensor.shape)


class MMDetInfer:
    """mmdetection inference as its users run it (``test_step`` under ``no_grad``, as its
    test loop)."""

    def __init__(self, model, data: dict):
        self.model, self.data, self.last = model, data, None

    def __call__(self):
        self.model.eval()
        with torch.no_grad():
            self.last = self.model.test_step(self.data)

    def detections(self) -> List[int]:
        return [len(x.pred_instances) for x in self.last]

    def padded_input(self) -> List[int]:
        h, w = self.last[0].metainfo["batch_input_shape"]
        return [len(self.last), 3, h, w]


def _grad_scaler(device_type: str, enabled: bool):
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


class AmpTrainStep:
    """
    One training step as detectron2's ``AMPTrainer`` / mmengine's ``AmpOptimWrapper``: the
    forward pass (:meth:`loss`) under ``torch.autocast`` in ``precision`` ("float32": autocast
    off), backward through a ``GradScaler`` (enabled for float16 only), SGD step.
    """

    def __init__(self, model, device: str, precision: str):
        self.model = model
        self.device_type = torch.device(device).type
        self.precision = precision
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        self.scaler = _grad_scaler(self.device_type, enabled=precision == "float16")

    def autocast(self):
        enabled = self.precision != "float32"
        dtype = getattr(torch, self.precision) if enabled else None
        return torch.autocast(self.device_type, dtype=dtype, enabled=enabled)

    def loss(self) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self):
        self.model.train()
        loss = self.loss()
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


class D2TrainStep(AmpTrainStep):
    def __init__(self, model, inputs: List[dict], device: str, precision: str):
        super().__init__(model, device, precision)
        self.inputs = inputs

    def loss(self):
        from detectron2.utils.events import EventStorage

        with EventStorage(0), self.autocast():
            return sum(self.model(self.inputs).values())


class MMDetTrainStep(AmpTrainStep):
    def __init__(self, model, data: dict, device: str, precision: str):
        super().__init__(model, device, precision)
        self.data = data

    def loss(self):
        with self.autocast():  # mmengine's optim_context: preprocessing and forward
            data = self.model.data_preprocessor(self.data, True)
            losses = self.model.loss(data["inputs"], data["data_samples"])
        loss, _ = self.model.parse_losses(losses)
        return loss


def peak_train_memory(step: AmpTrainStep, device: str) -> dict:
    """Extra memory of one step above what is allocated before it, gradients freed."""
    step.optimizer.zero_grad(set_to_none=True)
    with PeakMemory(device) as mem:
        step()
    return {"extra_mib": mem.extra / MIB, "method": mem.method}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _ops_line(ops: dict) -> str:
    if not ops["emulated"]:
        return ops["note"]
    calls = ", ".join(f"{k} {v}" for k, v in sorted(ops.get("calls", {}).items())) or "none"
    return (
        f"{ops['note']}: nms by torchvision.ops.nms, sigmoid_focal_loss_forward/backward "
        f"(mmdetection's FocalLoss on CUDA only) by torch formulas; calls in this run: {calls}"
    )


def format_report(result: dict) -> List[str]:
    """The report's lines, from the result dict that goes to the JSON."""
    s, m, ops = result["settings"], result["machine"], result["mmcv_ops"]
    lines = [
        f"atss_d2 vs mmdetection {result['versions']['mmdet']} ATSS R-50-FPN, device "
        f"{s['device']} ({m.get('gpu') or m['cpu']}), torch {m['torch']}, "
        f"{m['torch_threads']} threads",
        _ops_line(ops),
        f"test settings (both): score thr {s['test']['score_thr']}, top {s['test']['nms_pre']}"
        f"/level, NMS IoU {s['test']['nms_iou']}, {s['test']['max_per_img']} detections; "
        f"scores: {s['scores']}",
    ]
    h, w = s["size"]
    for entry in result["inference"]:
        lines.append("")
        lines.append(
            f"Inference, batch {entry['batch']} of {h}x{w}, median of {s['iters']} after "
            f"{s['warmup']} warm-up"
        )
        lines.append(f"{'model':<9} {'ms/image':>9} {'images/s':>9} {'det/image':>10}")
        for name, r in entry["models"].items():
            det = sum(r["detections"]) / len(r["detections"])
            lines.append(
                f"{name:<9} {r['ms_per_image']:>9.1f} {r['images_per_s']:>9.2f} {det:>10g}"
            )
        mark = "met" if entry["fps_ratio"] >= entry["target"] else "MISSED"
        lines.append(
            f"atss_d2 fps / mmdet fps: {entry['fps_ratio']:.3f}  "
            f"target >= {entry['target']:.2f}: {mark}"
        )
    train = result.get("train")
    if train:
        th, tw = s["train_size"]
        lines.append("")
        lines.append(
            f"Training step, batch {s['train_batch']} of {th}x{tw}, {s['num_gt']} GT/image, "
            f"SGD, {train['precision_note']}; median of {s['iters']} after "
            f"{train.get('warmup', s['warmup'])} warm-up"
        )
        lines.append(f"{'model':<9} {'step ms':>9} {'peak extra MiB':>15}")
        for name, r in train["models"].items():
            lines.append(f"{name:<9} {r['median_ms']:>9.1f} {r['memory']['extra_mib']:>15.1f}")
        lines.append(f"atss_d2 / mmdet step time: {train['step_time_ratio']:.3f}")
        value = train["memory_ratio"]
        mark = "met" if value <= train["target"] else "MISSED"
        lines.append(
            f"atss_d2 / mmdet peak memory: {value:.3f}  target <= {train['target']:.2f}: {mark}"
        )
        lines.append(f"(peak memory: {train['memory_method']})")
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", default="800x1333", help="inference image size HxW")
    p.add_argument("--infer-batch", type=int, nargs="+", default=[1, 8], help="images per call")
    p.add_argument("--train-size", default="800x1333", help="training image size HxW")
    p.add_argument("--train-batch", type=int, default=2, help="training images per step")
    p.add_argument("--num-gt", type=int, default=50, help="GT boxes per training image")
    p.add_argument(
        "--train-precision",
        choices=["auto", "float16", "bfloat16", "float32"],
        default="auto",
        help="autocast dtype of the training step; auto: float16 on CUDA, bfloat16 on the CPU "
        "(float32 if a model fails in bfloat16)",
    )
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scores", choices=["dense", "prior"], default="dense")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="output/benchmark", help="folder for mmdet_compare.json")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 256x320 images, inference batches 1 and 2, 1 warm-up, 2 iterations "
        "(explicit options still apply)",
    )
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def _train_precision(requested: str, device_type: str) -> str:
    if requested != "auto":
        return requested
    return "float16" if device_type == "cuda" else "bfloat16"


def _precision_note(precision: str, device_type: str) -> str:
    if precision == "float32":
        return "float32 (no autocast)"
    scaler = " + GradScaler" if precision == "float16" else ""
    return f'torch.autocast("{device_type}", dtype=torch.{precision}){scaler}'


def run_training(models: dict, args, device: str) -> dict:
    """Time the training steps and measure their peak memory; see the module docstring."""
    device_type = torch.device(device).type
    size = parse_size(args.train_size)
    inputs = to_device(
        make_inputs(size, args.train_batch, args.num_gt, args.seed + 1, True), device
    )
    data = mmdet_inputs(inputs)

    def make_steps(precision):
        return {
            "atss_d2": D2TrainStep(models["atss_d2"], inputs, device, precision),
            "mmdet": MMDetTrainStep(models["mmdet"], data, device, precision),
        }

    precision = _train_precision(args.train_precision, device_type)
    fallback = None
    steps = make_steps(precision)
    # The first warm-up call of each, outside the round robin: a model that fails in bfloat16
    # on the CPU makes both train in float32.
    try:
        for step in steps.values():
            step()
    except Exception as e:  # whatever a model raises in bfloat16
        if args.train_precision != "auto" or precision != "bfloat16":
            raise
        fallback = f"bfloat16 failed ({str(e).splitlines()[0][:200]}); float32 instead"
        print(f"training: {fallback}", file=sys.stderr)
        precision = "float32"
        steps = make_steps(precision)
        for step in steps.values():
            step()
    th, tw = size
    warmup = max(args.warmup, 1)  # the call above included
    desc = f"training {th}x{tw}x{args.train_batch}"
    times, _ = round_robin(steps, None, device, args.iters, warmup - 1, desc)
    out = {"precision": precision, "precision_fallback": fallback, "warmup": warmup, "models": {}}
    out["precision_note"] = _precision_note(precision, device_type)
    for name, step in steps.items():
        memory = peak_train_memory(step, device)
        out["models"][name] = {
            "times_ms": [1000 * t for t in times[name]],
            "median_ms": 1000 * median(times[name]),
            "memory": memory,
        }
        out["memory_method"] = memory["method"]
    ours, theirs = out["models"]["atss_d2"], out["models"]["mmdet"]
    out["step_time_ratio"] = ratio(ours["median_ms"], theirs["median_ms"])
    out["memory_ratio"] = ratio(ours["memory"]["extra_mib"], theirs["memory"]["extra_mib"])
    out["target"] = TARGET_TRAIN_RATIO
    out["memory_met"] = out["memory_ratio"] <= TARGET_TRAIN_RATIO
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    EMULATED_CALLS.clear()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device}: CUDA is not available (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); run with --device cpu"
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    import atss_d2  # noqa: F401  (warning filters, registration; before detectron2 and mmdet)

    mm = import_mmdet()
    import detectron2
    import torchvision
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    with tqdm(total=2, desc="building models") as bar:
        d2_model, d2_settings = build_atss_d2(device)
        bar.update()
        mm_model, mm_settings, mm_config = build_mmdet(device)
        bar.update()
    check_test_settings(d2_settings, mm_settings)
    if args.scores == "dense":
        dense_scores(d2_model)
        dense_scores_mmdet(mm_model)
    models = {"atss_d2": d2_model, "mmdet": mm_model}

    size = parse_size(args.size)
    result = {
        "machine": machine_info(device),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
        "settings": {
            "device": device,
            "size": list(size),
            "infer_batch": args.infer_batch,
            "train_size": list(parse_size(args.train_size)),
            "train_batch": args.train_batch,
            "num_gt": args.num_gt,
            "iters": args.iters,
            "warmup": args.warmup,
            "scores": args.scores,
            "seed": args.seed,
            "test": dict(TEST_SETTINGS),
            "test_atss_d2": d2_settings,
            "test_mmdet": mm_settings,
            "atss_d2_config": "configs/COCO-Detection/atss_R_50_FPN_1x.yaml, random weights",
            "mmdet_config": mm_config,
        },
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "detectron2": detectron2.__version__,
            **mm["versions"],
        },
        "mmcv_ops": {
            "emulated": mm["emulated_ops"],
            "note": EMULATED_NOTE if mm["emulated_ops"] else COMPILED_NOTE,
        },
        "inference": [],
        "train": None,
    }

    for batch in args.infer_batch:
        inputs = to_device(make_inputs(size, batch, 0, args.seed, False), device)
        steps = {
            "atss_d2": D2Infer(d2_model, inputs),
            "mmdet": MMDetInfer(mm_model, mmdet_inputs(inputs)),
        }
        desc = f"inference {size[0]}x{size[1]}x{batch}"
        times, _ = round_robin(steps, None, device, args.iters, args.warmup, desc)
        entry = {"batch": batch, "models": {}}
        for name, step in steps.items():
            seconds = median(times[name])
            entry["models"][name] = {
                "times_ms": [1000 * t for t in times[name]],
                "median_ms": 1000 * seconds,
                "ms_per_image": 1000 * seconds / batch,
                "images_per_s": batch / seconds,
                "detections": step.detections(),
                "padded_input": step.padded_input(),
            }
        fps = [entry["models"][n]["images_per_s"] for n in ("atss_d2", "mmdet")]
        entry["fps_ratio"] = ratio(*fps)
        entry["target"] = TARGET_FPS_RATIO
        entry["met"] = entry["fps_ratio"] >= TARGET_FPS_RATIO
        result["inference"].append(entry)

    if not args.no_train:
        result["train"] = run_training(models, args, device)
    result["mmcv_ops"]["calls"] = dict(EMULATED_CALLS)

    lines = format_report(result)
    result["report"] = lines
    print("\n" + "\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "mmdet_compare.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
