"""
Every shipped config trains one step and runs inference (at a reduced width and image size, so
that the deep variants stay fast: R-101, ResNeXt, DCNv2 and the POINT variant included), and
builds at full size on the ``meta`` device (shapes only, no memory), where the parameter count
of the reference architectures is checked against numbers worked out from their definitions.
"""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from atss_d2 import add_atss_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "atss_*.yaml"), recursive=True)
)


def load(path, *opts):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def reduced(path):
    """The config at a fraction of its width: every layer kind kept (grouped and deformable
    convs, GN towers, all levels), channels reduced so that a step takes a fraction of a
    second."""
    cfg = load(path)
    r = cfg.MODEL.RESNETS
    # FPN 64: GroupNorm(32) then normalises two values per group on a 1x1 P7.
    opts = ["MODEL.FPN.OUT_CHANNELS", "64"]
    if r.DEPTH >= 50:  # bottleneck blocks: 32 output channels, bottleneck of groups x width 8
        groups = min(r.NUM_GROUPS, 4)
        opts += ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
                 "MODEL.RESNETS.NUM_GROUPS", str(groups),
                 "MODEL.RESNETS.WIDTH_PER_GROUP", str(8 // groups)]  # fmt: skip
    # (ResNet-18/34: detectron2 fixes their widths at 64.)
    opts += ["MODEL.ATSS.NUM_CONVS", str(min(cfg.MODEL.ATSS.NUM_CONVS, 2))]
    cfg.merge_from_list(opts)
    return cfg


def _inputs(num_classes):
    images = []
    for h, w in ((96, 128), (80, 112)):  # two sizes: padded batch
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(
            torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 90.0, 60.0]])
        )
        instances.gt_classes = torch.tensor([0, num_classes - 1])
        images.append(
            {"image": torch.rand(3, h, w) * 255, "instances": instances, "height": h, "width": w}
        )
    return images


@pytest.mark.parametrize("path", CONFIGS)
def test_one_training_step_and_inference(path):
    cfg = reduced(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    inputs = _inputs(cfg.MODEL.ATSS.NUM_CLASSES)
    with EventStorage():
        losses = model(inputs)
        total = sum(losses.values())
        total.backward()
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": inputs[0]["image"], "height": 96, "width": 128}])
    boxes = out["instances"].pred_boxes.tensor
    assert out["instances"].image_size == (96, 128)
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def _num_params(path):
    with torch.device("meta"):
        model = build_model(load(path, "MODEL.DEVICE", "meta"))
    assert all(p.device.type == "meta" for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def _head_params(num_classes, channels=256, convs=4, levels=5):
    # Per tower conv: 3x3 weights without bias + GroupNorm weight and bias; predictors with
    # bias: classes, 4 box deltas, 1 centerness; one scale per level.
    tower = 2 * convs * (9 * channels * channels + 2 * channels)
    predictors = (9 * channels + 1) * (num_classes + 4 + 1)
    return tower + predictors + levels


def _fpn_params(in_channels=(512, 1024, 2048), channels=256):
    lateral = sum(c * channels + channels for c in in_channels)
    output = len(in_channels) * (9 * channels * channels + channels)
    p6_p7 = 2 * (9 * channels * channels + channels)
    return lateral + output + p6_p7


# torchvision's resnet50 / resnet101 without the classifier (fc: 2048 x 1000 + 1000); BatchNorm
# affine parameters count as parameters there as here.
RESNET50 = 25_557_032 - (2048 * 1000 + 1000)
RESNET101 = 44_549_160 - (2048 * 1000 + 1000)


@pytest.mark.parametrize(
    "path,resnet",
    [
        ("configs/COCO-Detection/atss_R_50_FPN_1x.yaml", RESNET50),
        ("configs/COCO-Detection/atss_R_101_FPN_1x.yaml", RESNET101),
    ],
)
def test_full_size_parameter_count(path, resnet):
    # ATSS R-50 on COCO: about 32.1M parameters (mmdetection's model card lists 32.07M for
    # atss_r50_fpn_1x_coco; the count below is exact from the layer definitions).
    # FREEZE_AT 2 turns the norms of the stem and res2 into FrozenBatchNorm2d, whose weight and
    # bias are buffers: stem 64, res2 three blocks of 64 + 64 + 256 and the shortcut's 256
    # channels, two numbers each.
    frozen = 2 * (64 + 3 * (64 + 64 + 256) + 256)
    expected = resnet - frozen + _fpn_params() + _head_params(80)
    assert _num_params(path) == expected
