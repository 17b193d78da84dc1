"""
Checkpoint conversion (mmdetection, the authors' maskrcnn-benchmark code, torchvision) to
atss_d2 models.

The fake source checkpoints below are written from the source projects' model definitions (key
names, shapes, which convs have biases, what the BatchNorms store), independently of the
converter's rename rules. The reference forward functions re-implement each source layer
directly on the *source* tensors (BN eval with eps, the authors' FrozenBatchNorm without eps,
stride placement, FPN top-down and P6/P7 with or without ReLU, towers, per-level scales, a
naive bilinear DCNv2), so a wrong mapping, a missing value fix-up or a wrong architecture
setting shows up as a numerical difference.

Numerical checks use tiny widths set through the config (the key names are those of R-50);
name/shape checks of the real sizes build the models on the meta device.
"""

import importlib.util
import math
import os
from dataclasses import dataclass, replace
from typing import Dict, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from atss_d2 import add_atss_config
from atss_d2.checkpoint import (
    ConversionError,
    SafeDetectionCheckpointer,
    convert_state_dict,
    default_config,
    extract_state_dict,
    infer_model_arch,
    safe_torch_load,
    verify_against,
)
from atss_d2.modeling import ATSSBoxCoder, DeformConvWithOffset, FrozenStatsBatchNorm2d
from atss_d2.modeling.anchor_generator import ATSSLegacyAnchorGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STRIDES = (8, 16, 32, 64, 128)
# Tiny widths with the key layout of R-50 (GN in the head keeps 32 groups: 64 channels).
TINY = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ATSS.NUM_CLASSES", "3",
]  # fmt: skip


# The reason given for dropping num_batches_tracked: true whether the target norm has a
# counter (BN) or not (FrozenBN, FrozenStatsBN).
BN_COUNTER_REASON = (
    "BatchNorm step counter, not a weight: not carried over "
    "(FrozenBN and FrozenStatsBN have none; BN counts from 0)"
)


def load_tool():
    path = os.path.join(ROOT, "tools", "convert_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_cfg(config: str, opts: Sequence[str] = (), device: str = "cpu"):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    return cfg


def build(config: str, opts: Sequence[str] = ()):
    torch.manual_seed(0)
    return build_model(make_cfg(config, opts)).eval()


def meta_shapes(config: str, opts: Sequence[str] = ()) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(make_cfg(config, opts, device="meta"))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------
# Fake source checkpoints
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    depth: int = 50
    stem: int = 64
    width: int = 64  # per group, res2
    groups: int = 1
    res2_out: int = 256
    fpn: int = 256
    classes: int = 80
    dcn_stages: Tuple[int, ...] = ()  # detectron2 stage numbers (res3 = 3)
    tower_dcn: bool = False


TINY_ARCH = Arch(stem=8, width=8, res2_out=32, fpn=64, classes=3)


class Fake:
    """Random tensors with sane scales (or shape-only meta tensors)."""

    def __init__(self, seed: int = 0, meta: bool = False):
        self.g = torch.Generator().manual_seed(seed)
        self.meta = meta

    def _new(self, shape, fn):
        if self.meta:
            return torch.empty(shape, device="meta")
        return fn(shape)

    def conv(self, *shape):
        fan_in = math.prod(shape[1:])
        return self._new(shape, lambda s: torch.randn(s, generator=self.g) / math.sqrt(fan_in))

    def normal(self, n, std):
        return self._new((n,), lambda s: torch.randn(s, generator=self.g) * std)

    def uniform(self, n, lo, hi):
        return self._new((n,), lambda s: lo + (hi - lo) * torch.rand(s, generator=self.g))


def resnet_source(f: Fake, a: Arch, prefix: str, stem: str, bn_counter: bool) -> dict:
    """torchvision-named ResNet (torchvision, mmdet ``ResNet``, maskrcnn-benchmark ``ResNet``)."""
    sd = {}

    def bn(p, n, small_var=False):
        sd[p + "weight"] = f.uniform(n, 0.5, 1.5)
        sd[p + "bias"] = f.normal(n, 0.1)
        sd[p + "running_mean"] = f.normal(n, 0.1)
        # Small variances in the stem make eps matter (frozen BN with vs without eps).
        sd[p + "running_var"] = f.uniform(n, 2e-5, 1e-4) if small_var else f.uniform(n, 0.5, 1.5)
        if bn_counter:
            sd[p + "num_batches_tracked"] = torch.tensor(1000, dtype=torch.long)

    sd[prefix + stem + "conv1.weight"] = f.conv(a.stem, 3, 7, 7)
    bn(prefix + stem + "bn1.", a.stem, small_var=True)
    cin = a.stem
    for layer, num_blocks in enumerate(BLOCKS[a.depth], start=1):
        mid = a.groups * a.width * 2 ** (layer - 1)
        out = a.res2_out * 2 ** (layer - 1)
        for i in range(num_blocks):
            p = f"{prefix}layer{layer}.{i}."
            sd[p + "conv1.weight"] = f.conv(mid, cin, 1, 1)
            bn(p + "bn1.", mid)
            if layer + 1 in a.dcn_stages:  # maskrcnn-benchmark DFConv2d (modulated)
                sd[p + "conv2.offset.weight"] = f.conv(27, mid, 3, 3)
                sd[p + "conv2.offset.bias"] = f.normal(27, 0.5)
                sd[p + "conv2.conv.weight"] = f.conv(mid, mid // a.groups, 3, 3)
            else:
                sd[p + "conv2.weight"] = f.conv(mid, mid // a.groups, 3, 3)
            bn(p + "bn2.", mid)
            sd[p + "conv3.weight"] = f.conv(out, mid, 1, 1)
            bn(p + "bn3.", out)
            if i == 0:
                sd[p + "downsample.0.weight"] = f.conv(out, cin, 1, 1)
                bn(p + "downsample.1.", out)
            cin = out
    return sd


def mmdet_source(f: Fake, a: Arch) -> dict:
    """mmdetection ``ATSS``: ResNet(style='pytorch'), FPN(start_level=1, 'on_output'), ATSSHead."""
    sd = resnet_source(f, a, "backbone.", "", bn_counter=True)
    for i, cin in enumerate((a.res2_out * 2, a.res2_out * 4, a.res2_out * 8)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = f.conv(a.fpn, cin, 1, 1)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = f.normal(a.fpn, 0.1)
    for i in range(5):
        sd[f"neck.fpn_convs.{i}.conv.weight"] = f.conv(a.fpn, a.fpn, 3, 3)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = f.normal(a.fpn, 0.1)
    for t in ("cls", "reg"):
        for i in range(4):  # ConvModule: conv without bias (norm follows), then "gn"
            sd[f"bbox_head.{t}_convs.{i}.conv.weight"] = f.conv(a.fpn, a.fpn, 3, 3)
            sd[f"bbox_head.{t}_convs.{i}.gn.weight"] = f.uniform(a.fpn, 0.5, 1.5)
            sd[f"bbox_head.{t}_convs.{i}.gn.bias"] = f.normal(a.fpn, 0.1)
    for name, n in (("atss_cls", a.classes), ("atss_reg", 4), ("atss_centerness", 1)):
        sd[f"bbox_head.{name}.weight"] = f.conv(n, a.fpn, 3, 3)
        sd[f"bbox_head.{name}.bias"] = f.normal(n, 0.5)
    for level in range(5):
        sd[f"bbox_head.scales.{level}.scale"] = f.uniform(1, 0.5, 1.5).reshape(())
    return {"meta": {"mmdet_version": "2.25.0", "epoch": 12}, "state_dict": sd}


def atss_source(f: Fake, a: Arch) -> dict:
    """The authors' GeneralizedRCNN(RPN_ONLY, ATSS_ON), saved from DistributedDataParallel."""
    sd = resnet_source(f, a, "backbone.body.", "stem.", bn_counter=False)
    for k, cin in ((2, a.res2_out * 2), (3, a.res2_out * 4), (4, a.res2_out * 8)):
        sd[f"backbone.fpn.fpn_inner{k}.weight"] = f.conv(a.fpn, cin, 1, 1)
        sd[f"backbone.fpn.fpn_inner{k}.bias"] = f.normal(a.fpn, 0.1)
        sd[f"backbone.fpn.fpn_layer{k}.weight"] = f.conv(a.fpn, a.fpn, 3, 3)
        sd[f"backbone.fpn.fpn_layer{k}.bias"] = f.normal(a.fpn, 0.1)
    for p in ("p6", "p7"):
        sd[f"backbone.fpn.top_blocks.{p}.weight"] = f.conv(a.fpn, a.fpn, 3, 3)
        sd[f"backbone.fpn.top_blocks.{p}.bias"] = f.normal(a.fpn, 0.1)
    for t in ("cls", "bbox"):
        for i in range(4):
            p = f"rpn.head.{t}_tower.{3 * i}."
            if a.tower_dcn and i == 3:  # DFConv2d(..., bias=True), modulated by default
                sd[p + "offset.weight"] = f.conv(27, a.fpn, 3, 3)
                sd[p + "offset.bias"] = f.normal(27, 0.5)
                sd[p + "conv.weight"] = f.conv(a.fpn, a.fpn, 3, 3)
                sd[p + "conv.bias"] = f.normal(a.fpn, 0.1)
            else:
                sd[p + "weight"] = f.conv(a.fpn, a.fpn, 3, 3)
                sd[p + "bias"] = f.normal(a.fpn, 0.1)
            sd[f"rpn.head.{t}_tower.{3 * i + 1}.weight"] = f.uniform(a.fpn, 0.5, 1.5)
            sd[f"rpn.head.{t}_tower.{3 * i + 1}.bias"] = f.normal(a.fpn, 0.1)
    # NUM_CLASSES counts the background: 81 -> 80 logits.
    for name, n in (("cls_logits", a.classes), ("bbox_pred", 4), ("centerness", 1)):
        sd[f"rpn.head.{name}.weight"] = f.conv(n, a.fpn, 3, 3)
        sd[f"rpn.head.{name}.bias"] = f.normal(n, 0.5)
    for level in range(5):
        sd[f"rpn.head.scales.{level}.scale"] = f.uniform(1, 0.5, 1.5)  # FloatTensor([v])
    for level, stride in enumerate(STRIDES):
        sd[f"rpn.anchor_generator.cell_anchors.{level}"] = torch.from_numpy(
            authors_cell_anchors(stride, [8 * stride], [1.0])
        ).float()
    sd = {"module." + k: v for k, v in sd.items()}
    opt = {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}
    return {"model": sd, "optimizer": opt, "scheduler": {"last_epoch": 90000}, "iteration": 90000}


def torchvision_source(f: Fake, a: Arch) -> dict:
    sd = resnet_source(f, a, "", "", bn_counter=True)
    sd["fc.weight"] = f.conv(1000, a.res2_out * 8)
    sd["fc.bias"] = f.normal(1000, 0.1)
    return sd


def authors_cell_anchors(stride, sizes, ratios) -> np.ndarray:
    """The ATSS repository's generate_anchors(stride, sizes, ratios), re-implemented."""
    base = np.array([1, 1, stride, stride], dtype=np.float64) - 0.5

    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack(
            [x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)]
        )

    w, h, x, y = whctrs(base)
    ws = np.round(np.sqrt(w * h / np.array(ratios, dtype=np.float64)))
    hs = np.round(ws * np.array(ratios))
    by_ratio = mk(ws, hs, x, y)
    scales = np.array(sizes, dtype=np.float64) / stride
    out = []
    for anchor in by_ratio:
        w, h, x, y = whctrs(anchor)
        out.append(mk(w * scales, h * scales, x, y))
    return np.vstack(out)


# ------------------------------------------------------------------------------------------
# Reference implementations of the source layers
# ------------------------------------------------------------------------------------------
def bn_eval(x, sd, p):
    """torch BatchNorm2d in eval mode (mmdetection, torchvision): eps 1e-5."""
    return F.batch_norm(
        x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
        False, 0.0, 1e-5,
    )  # fmt: skip


def frozen_bn_no_eps(x, sd, p):
    """maskrcnn-benchmark FrozenBatchNorm2d: weight * running_var.rsqrt(), no eps."""
    scale = sd[p + "weight"] * sd[p + "running_var"].rsqrt()
    shift = sd[p + "bias"] - sd[p + "running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def bilinear_zero_padded(x, py, px):
    """Sample x (N, C, H, W) at fractional (py, px) (N, Ho, Wo); out-of-image corners are 0."""
    n, c, h, w = x.shape
    y0, x0 = py.floor(), px.floor()
    out = 0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            weight = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().flatten(1)
            v = x.flatten(2).gather(2, index[:, None].expand(-1, c, -1)).view(n, c, *py.shape[1:])
            out = out + v * (weight * valid)[:, None]
    return out


def naive_deform_conv(x, offset, mask, weight, bias, stride=1, padding=1, dilation=1):
    """Deformable conv by explicit sampling: tap k of offset group g reads channel
    2 * (g * K + k) as dy and the next one as dx, scaled by mask channel g * K + k."""
    n, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    ho, wo = offset.shape[-2:]
    base_y = (torch.arange(ho) * stride - padding).view(1, ho, 1).float()
    base_x = (torch.arange(wo) * stride - padding).view(1, 1, wo).float()
    cols = []
    for k in range(taps):
        ki, kj = divmod(k, kw)
        per_group = []
        channels = c // offset_groups
        for g in range(offset_groups):
            dy = offset[:, 2 * (g * taps + k)]
            dx = offset[:, 2 * (g * taps + k) + 1]
            v = bilinear_zero_padded(
                x[:, g * channels : (g + 1) * channels],
                base_y + ki * dilation + dy,
                base_x + kj * dilation + dx,
            )
            if mask is not None:
                v = v * mask[:, g * taps + k][:, None]
            per_group.append(v)
        cols.append(torch.cat(per_group, dim=1))
    cols = torch.stack(cols, dim=2)  # (N, C, K, Ho, Wo)
    groups = c // c_per_group
    cols = cols.view(n, groups, c_per_group, taps, ho, wo)
    wg = weight.view(groups, out_c // groups, c_per_group, taps)
    out = torch.einsum("ngckhw,gock->ngohw", cols, wg).reshape(n, out_c, ho, wo)
    return out if bias is None else out + bias[None, :, None, None]


def authors_dfconv(x, sd, p, stride=1):
    """DFConv2d(with_modulated_dcn=True): offsets = first 18 channels, mask = sigmoid(last 9)."""
    om = F.conv2d(x, sd[p + "offset.weight"], sd[p + "offset.bias"], stride=stride, padding=1)
    return naive_deform_conv(
        x, om[:, :18], om[:, 18:].sigmoid(), sd[p + "conv.weight"], sd.get(p + "conv.bias"), stride
    )


def ref_resnet(x, sd, prefix, stem, norm, stride_in_1x1, a: Arch):
    feats = {}
    x = F.relu(norm(F.conv2d(x, sd[prefix + stem + "conv1.weight"], stride=2, padding=3), sd,
                    prefix + stem + "bn1."))  # fmt: skip
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    feats["stem"] = x
    for layer, num_blocks in enumerate(BLOCKS[a.depth], start=1):
        for i in range(num_blocks):
            p = f"{prefix}layer{layer}.{i}."
            stride = 2 if i == 0 and layer > 1 else 1
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            out = F.relu(norm(F.conv2d(x, sd[p + "conv1.weight"], stride=s1), sd, p + "bn1."))
            if layer + 1 in a.dcn_stages:
                out = authors_dfconv(out, sd, p + "conv2.", stride=s3)
            else:
                out = F.conv2d(out, sd[p + "conv2.weight"], stride=s3, padding=1, groups=a.groups)
            out = F.relu(norm(out, sd, p + "bn2."))
            out = norm(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "bn3.")
            if i == 0:
                identity = norm(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd,
                                p + "downsample.1.")  # fmt: skip
            else:
                identity = x
            x = F.relu(out + identity)
        feats[f"res{layer + 1}"] = x
    return feats


def conv(x, sd, p, stride=1, padding=0):
    return F.conv2d(x, sd[p + "weight"], sd.get(p + "bias"), stride=stride, padding=padding)


def ref_mmdet_fpn(c, sd):
    """FPN(start_level=1, add_extra_convs='on_output', relu_before_extra_convs=False)."""
    lat = [conv(c[f"res{i + 3}"], sd, f"neck.lateral_convs.{i}.conv.") for i in range(3)]
    for i in (2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [conv(lat[i], sd, f"neck.fpn_convs.{i}.conv.", padding=1) for i in range(3)]
    outs.append(conv(outs[-1], sd, "neck.fpn_convs.3.conv.", stride=2, padding=1))
    outs.append(conv(outs[-1], sd, "neck.fpn_convs.4.conv.", stride=2, padding=1))  # no ReLU
    return outs


def ref_atss_fpn(c, sd):
    """maskrcnn-benchmark FPN + LastLevelP6P7 (use_P5: P6 on P5, ReLU before P7)."""
    last = conv(c["res5"], sd, "backbone.fpn.fpn_inner4.")
    results = [conv(last, sd, "backbone.fpn.fpn_layer4.", padding=1)]
    for k in (3, 2):
        lateral = conv(c[f"res{k + 1}"], sd, f"backbone.fpn.fpn_inner{k}.")
        last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
        results.insert(0, conv(last, sd, f"backbone.fpn.fpn_layer{k}.", padding=1))
    p6 = conv(results[-1], sd, "backbone.fpn.top_blocks.p6.", stride=2, padding=1)
    p7 = conv(F.relu(p6), sd, "backbone.fpn.top_blocks.p7.", stride=2, padding=1)
    return results + [p6, p7]


def ref_head(features, sd, towers, predictors, scales, tower_dcn=False):
    """Shared towers of 4 x (3x3 conv, GroupNorm(32), ReLU); regression x per-level scale."""
    cls_out, reg_out, ctr_out = [], [], []
    for level, x in enumerate(features):
        feats = []
        for tower in towers:
            t = x
            for i in range(4):
                conv_p, gn_p = tower(i)
                if tower_dcn and i == 3:
                    t = authors_dfconv(t, sd, conv_p)
                else:
                    t = conv(t, sd, conv_p, padding=1)
                t = F.relu(F.group_norm(t, 32, sd[gn_p + "weight"], sd[gn_p + "bias"], 1e-5))
            feats.append(t)
        cls_p, reg_p, ctr_p = predictors
        cls_out.append(conv(feats[0], sd, cls_p, padding=1))
        reg_out.append(conv(feats[1], sd, reg_p, padding=1) * scales[level].reshape(()))
        ctr_out.append(conv(feats[1], sd, ctr_p, padding=1))
    return cls_out, reg_out, ctr_out


def ref_mmdet_head(features, sd):
    return ref_head(
        features,
        sd,
        [lambda i, t=t: (f"bbox_head.{t}_convs.{i}.conv.", f"bbox_head.{t}_convs.{i}.gn.")
         for t in ("cls", "reg")],
        ("bbox_head.atss_cls.", "bbox_head.atss_reg.", "bbox_head.atss_centerness."),
        [sd[f"bbox_head.scales.{level}.scale"] for level in range(5)],
    )  # fmt: skip


def ref_atss_head(features, sd, tower_dcn):
    return ref_head(
        features,
        sd,
        [lambda i, t=t: (f"rpn.head.{t}_tower.{3 * i}.", f"rpn.head.{t}_tower.{3 * i + 1}.")
         for t in ("cls", "bbox")],
        ("rpn.head.cls_logits.", "rpn.head.bbox_pred.", "rpn.head.centerness."),
        [sd[f"rpn.head.scales.{level}.scale"] for level in range(5)],
        tower_dcn=tower_dcn,
    )  # fmt: skip


def assert_close(actual, expected, what):
    scale = expected.abs().max().item() + 1e-6
    torch.testing.assert_close(
        actual, expected, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{what}: {m}"
    )


def check_model_against_reference(model, ref_backbone, ref_fpn, ref_head_fn):
    """Module by module: stem, res3..res5, P3..P7, head (fed the reference P3..P7)."""
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_c = ref_backbone(x)
        bottom_up = model.backbone.bottom_up
        assert_close(bottom_up.stem(x), ref_c["stem"], "stem")
        ours_c = bottom_up(x)
        for name in ("res3", "res4", "res5"):
            assert_close(ours_c[name], ref_c[name], name)
        ref_p = ref_fpn(ref_c)
        ours_p = model.backbone(x)
        for level, ref in zip(("p3", "p4", "p5", "p6", "p7"), ref_p):
            assert_close(ours_p[level], ref, level)
        ours_h = model.head(ref_p)
        for name, ours, refs in zip(
            ("logits", "box regression", "centerness"), ours_h, ref_head_fn(ref_p)
        ):
            for level, (o, r) in enumerate(zip(ours, refs)):
                assert_close(o, r, f"{name} P{level + 3}")


def state_of(checkpoint, source):
    state, _ = extract_state_dict(source, checkpoint)
    return state


# ------------------------------------------------------------------------------------------
# Numerical equivalence (tiny widths)
# ------------------------------------------------------------------------------------------
def test_mmdet_converted_model_computes_like_mmdetection():
    src = state_of(mmdet_source(Fake(0), TINY_ARCH), "mmdet")
    converted, report = convert_state_dict("mmdet", src)
    assert not report.unrecognized
    assert {r for _, r in report.ignored} == {BN_COUNTER_REASON}
    model = build("configs/COCO-Detection/atss_R_50_FPN_1x.yaml", TINY)
    # mmdetection's norm_eval BatchNorm (MODEL.RESNETS.NORM FrozenStatsBN) after res2: the
    # converted FrozenBN-style tensors fill it with no missing or unexpected name.
    norms = model.backbone.bottom_up.res3[0].conv1.norm, model.backbone.bottom_up.res2[0].conv1.norm
    assert isinstance(norms[0], FrozenStatsBatchNorm2d) and isinstance(norms[1], FrozenBatchNorm2d)
    verify_against(converted, report, {k: v.shape for k, v in model.state_dict().items()})
    report.raise_if_failed()
    assert not report.missing and not report.unexpected
    model.load_state_dict(converted, strict=True)
    model.train()  # statistics frozen in training mode too: the same outputs
    check_model_against_reference(
        model,
        lambda x: ref_resnet(x, src, "backbone.", "", bn_eval, False, TINY_ARCH),
        lambda c: ref_mmdet_fpn(c, src),
        lambda p: ref_mmdet_head(p, src),
    )


AUTHORS_CASES = {
    # MSRA ResNet: stride in the 1x1 conv.
    "R_50": (TINY_ARCH, "configs/Original/atss_R_50_FPN_1x.yaml", [], True),
    # DCNv2 in res3-res5 (after a strided 1x1) and in the towers.
    "dcnv2_R_50": (
        replace(TINY_ARCH, dcn_stages=(3, 4, 5), tower_dcn=True),
        "configs/Original/atss_dcnv2_R_50_FPN_1x.yaml",
        [],
        True,
    ),
    # ResNeXt: grouped DCNv2 in res4-res5 with the stride in the deformable 3x3.
    "dcnv2_X_50_2x4d": (
        replace(TINY_ARCH, groups=2, width=4, dcn_stages=(4, 5), tower_dcn=True),
        "configs/Original/atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml",
        ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.NUM_GROUPS", "2"]
        + ["MODEL.RESNETS.WIDTH_PER_GROUP", "4"],
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(AUTHORS_CASES))
def test_authors_converted_model_computes_like_the_original(tmp_path, capsys, case):
    arch, config, extra_opts, stride_in_1x1 = AUTHORS_CASES[case]
    opts = TINY + extra_opts
    checkpoint = atss_source(Fake(1), arch)
    src_path, out_path = str(tmp_path / "ATSS.pth"), str(tmp_path / "converted.pth")
    torch.save(checkpoint, src_path)
    tool = load_tool()
    assert tool.main(["--source", "atss", src_path, out_path, "--config-file", config, *opts]) == 0
    printed = capsys.readouterr().out
    assert "conversion OK" in printed and "anchors equal the config's" in printed
    assert "var - 1e-5" in printed and "iteration" in printed  # value fix-up and left-out state

    model = build(config, opts)
    extra = SafeDetectionCheckpointer(model).load(out_path)
    assert extra["__author__"].startswith("ATSS authors")
    saved = safe_torch_load(out_path)["model"]
    assert set(saved) == set(model.state_dict())  # nothing missing, nothing unexpected
    src = state_of(checkpoint, "atss")
    src = {k[len("module.") :]: v for k, v in src.items()}
    check_model_against_reference(
        model,
        lambda x: ref_resnet(
            x, src, "backbone.body.", "stem.", frozen_bn_no_eps, stride_in_1x1, arch
        ),
        lambda c: ref_atss_fpn(c, src),
        lambda p: ref_atss_head(p, src, tower_dcn=arch.tower_dcn),
    )


def test_torchvision_backbone_computes_like_torchvision():
    src = torchvision_source(Fake(2), TINY_ARCH)
    converted, report = convert_state_dict("torchvision", src)
    assert [k for k, r in report.ignored if "classifier" in r] == ["fc.weight", "fc.bias"]
    config = "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"
    model = build(config, TINY)
    target = {
        k: v.shape for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    verify_against(converted, report, target).raise_if_failed()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and all(not k.startswith("backbone.bottom_up.") for k in missing)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ref_resnet(x, src, "", "", bn_eval, False, TINY_ARCH)
        ours = model.backbone.bottom_up(x)
        for name in ("res3", "res4", "res5"):
            assert_close(ours[name], ref[name], name)
        # Control: with the stride in the 1x1 conv (MSRA style) the same weights differ.
        msra = build(config, TINY + ["MODEL.RESNETS.STRIDE_IN_1X1", "True"])
        msra.load_state_dict(converted, strict=False)
        assert not torch.allclose(msra.backbone.bottom_up(x)["res3"], ref["res3"], atol=1e-3)


def test_deform_conv_with_offset_matches_naive_sampling():
    torch.manual_seed(0)
    for modulated in (True, False):
        layer = DeformConvWithOffset(
            8, 6, kernel_size=3, stride=2, padding=1, groups=2, deformable_groups=2,
            bias=True, modulated=modulated,
        )  # fmt: skip
        with torch.no_grad():
            layer.offset.weight.normal_(0, 0.3)
            layer.offset.bias.normal_(0, 1.0)
            layer.conv.bias.normal_()
        x = torch.randn(2, 8, 9, 11)
        om = layer.offset(x)
        offset, mask = (om[:, :36], om[:, 36:].sigmoid()) if modulated else (om, None)
        assert offset.abs().max() > 1.0  # samples really move, some outside the image
        expected = naive_deform_conv(x, offset, mask, layer.conv.weight, layer.conv.bias, stride=2)
        assert_close(layer(x), expected, f"modulated={modulated}")


def test_deform_bottleneck_has_detectron2_parameter_names():
    # Checkpoints move between this block and detectron2's compiled DeformBottleneckBlock.
    from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as Detectron2Block

    from atss_d2.modeling import DeformBottleneckBlock

    kwargs = dict(
        bottleneck_channels=16, stride=2, num_groups=4, norm="FrozenBN", deform_modulated=True
    )
    ours = DeformBottleneckBlock(32, 64, **kwargs).state_dict()
    theirs = Detectron2Block(32, 64, **kwargs).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dcnv2_model_on_cuda_matches_cpu():
    # torchvision's CUDA deform_conv2d kernel against its CPU one, through a converted model.
    config = "configs/Original/atss_dcnv2_R_50_FPN_1x.yaml"
    arch = replace(TINY_ARCH, dcn_stages=(3, 4, 5), tower_dcn=True)
    converted, report = convert_state_dict("atss", state_of(atss_source(Fake(5), arch), "atss"))
    model = build(config, TINY)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            features = model.backbone(x)
            cpu = model.head([features[f] for f in model.head_in_features])
            model.cuda()
            features = model.backbone(x.cuda())
            gpu = model.head([features[f] for f in model.head_in_features])
            anchors = model.anchor_generator([features[f] for f in model.head_in_features])
            detections = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    for name, ours, refs in zip(("logits", "box regression", "centerness"), gpu, cpu):
        for level, (o, r) in enumerate(zip(ours, refs)):
            assert_close(o.cpu(), r, f"{name} P{level + 3}")
    assert anchors[0].tensor[0].tolist() == [-27.5, -27.5, 35.5, 35.5]
    assert detections[0]["instances"].pred_boxes.tensor.device.type == "cuda"


# ------------------------------------------------------------------------------------------
# Anchors and box coding of the authors' code
# ------------------------------------------------------------------------------------------
def test_legacy_anchor_generator_matches_the_authors_anchors():
    sizes = [[8 * s] for s in STRIDES]
    gen = ATSSLegacyAnchorGenerator(
        sizes=sizes, aspect_ratios=[[0.5, 1.0, 2.0]], strides=list(STRIDES), offset=0.5
    )
    grids = [(3, 4), (2, 3), (2, 2), (1, 2), (1, 1)]
    anchors = gen([torch.zeros(1, 1, h, w) for h, w in grids])
    for level, (stride, (h, w)) in enumerate(zip(STRIDES, grids)):
        cell = authors_cell_anchors(stride, sizes[level], [0.5, 1.0, 2.0])
        # maskrcnn-benchmark grid_anchors: shifts arange(0, W * stride, stride), row-major.
        sy, sx = np.meshgrid(np.arange(h) * stride, np.arange(w) * stride, indexing="ij")
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
        expected = (shifts[:, None, :] + cell[None]).reshape(-1, 4)
        np.testing.assert_allclose(anchors[level].tensor.numpy(), expected, atol=1e-4)
    # By hand: stride 8, size 64, ratio 1 -> centre 4, half-extent 31.5.
    p3 = ATSSLegacyAnchorGenerator(sizes=[[64]], aspect_ratios=[[1.0]], strides=[8], offset=0.5)
    first_two = p3([torch.zeros(1, 1, 1, 2)])[0].tensor
    assert first_two.tolist() == [[-27.5, -27.5, 35.5, 35.5], [-19.5, -27.5, 43.5, 35.5]]


def test_legacy_box_decoding_matches_the_authors_box_coder():
    g = torch.Generator().manual_seed(0)
    anchors = torch.tensor([[-27.5, -27.5, 35.5, 35.5], [4.5, 12.5, 131.5, 139.5]]).repeat(50, 1)
    deltas = torch.randn(100, 4, generator=g) * 3
    deltas[0, 2] = 50.0  # exercises the clamp of dw
    # atss_core BoxCoder.decode (REGRESSION_TYPE 'BOX'), re-implemented.
    w = anchors[:, 2] - anchors[:, 0] + 1
    h = anchors[:, 3] - anchors[:, 1] + 1
    cx, cy = (anchors[:, 2] + anchors[:, 0]) / 2, (anchors[:, 3] + anchors[:, 1]) / 2
    dw = torch.clamp(deltas[:, 2] / 5, max=math.log(1000.0 / 16))
    dh = torch.clamp(deltas[:, 3] / 5, max=math.log(1000.0 / 16))
    px, py = deltas[:, 0] / 10 * w + cx, deltas[:, 1] / 10 * h + cy
    pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
    expected = torch.stack(
        [px - 0.5 * (pw - 1), py - 0.5 * (ph - 1), px + 0.5 * (pw - 1), py + 0.5 * (ph - 1)], 1
    )
    coder = ATSSBoxCoder((10.0, 10.0, 5.0, 5.0), legacy_plus_one=True)
    torch.testing.assert_close(coder.apply_deltas(deltas, anchors), expected)


def test_mmdet_anchors_and_box_decoding():
    model = build("configs/COCO-Detection/atss_R_50_FPN_1x.yaml", TINY)
    anchors = model.anchor_generator([torch.zeros(1, 1, 2, 3)] * 5)
    # mmdetection AnchorGenerator(octave_base_scale=8, ratios=[1.0], center_offset=0).
    for level, stride in enumerate(STRIDES):
        half = 4 * stride
        ys, xs = np.meshgrid(np.arange(2) * stride, np.arange(3) * stride, indexing="ij")
        c = np.stack([xs.ravel(), ys.ravel()], 1)
        expected = np.concatenate([c - half, c + half], 1)
        np.testing.assert_allclose(anchors[level].tensor.numpy(), expected)
    # DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2)).decode, wh_ratio_clip 16 / 1000.
    g = torch.Generator().manual_seed(0)
    boxes = anchors[0].tensor
    deltas = torch.randn(len(boxes), 4, generator=g) * 3
    d = deltas * torch.tensor([0.1, 0.1, 0.2, 0.2])
    max_ratio = abs(math.log(16 / 1000))
    dwh = d[:, 2:].clamp(-max_ratio, max_ratio)
    pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    pwh = boxes[:, 2:] - boxes[:, :2]
    gxy, gwh = pxy + pwh * d[:, :2], pwh * dwh.exp()
    expected = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], 1)
    torch.testing.assert_close(model.box_coder.apply_deltas(deltas, boxes), expected)


# ------------------------------------------------------------------------------------------
# Real sizes: every name and shape (meta tensors, nothing allocated)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [50, 101])
def test_mmdet_real_sizes_fill_the_shipped_config(depth):
    src = state_of(mmdet_source(Fake(meta=True), Arch(depth=depth)), "mmdet")
    converted, report = convert_state_dict("mmdet", src)
    config, opts = default_config(
        "mmdet", infer_model_arch(converted), os.path.join(ROOT, "configs")
    )
    assert config.endswith(f"COCO-Detection/atss_R_{depth}_FPN_1x.yaml")
    verify_against(converted, report, meta_shapes(config, opts)).raise_if_failed()
    bn_tensors = 1 + sum(BLOCKS[depth]) * 3 + 4  # stem, 3 per block, 4 downsamples
    assert len(report.ignored) == bn_tensors  # num_batches_tracked, nothing else


@pytest.mark.parametrize(
    "arch, name",
    [
        (Arch(), "atss_R_50_FPN_1x.yaml"),
        (Arch(depth=101, dcn_stages=(3, 4, 5), tower_dcn=True), "atss_dcnv2_R_101_FPN_2x_ms.yaml"),
        (
            Arch(depth=101, groups=64, width=4, dcn_stages=(4, 5), tower_dcn=True),
            "atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml",
        ),
        # No shipped config: the R-101 one with ResNeXt overrides.
        (Arch(depth=101, groups=32, width=8), "atss_R_101_FPN_2x_ms.yaml"),
    ],
)
def test_authors_real_sizes_fill_the_shipped_config(arch, name):
    src = state_of(atss_source(Fake(meta=True), arch), "atss")
    converted, report = convert_state_dict("atss", src)
    config, opts = default_config(
        "atss", infer_model_arch(converted), os.path.join(ROOT, "configs")
    )
    assert config.endswith("Original/" + name)
    if arch.groups > 1 and "X_101" not in name:
        assert "MODEL.RESNETS.STRIDE_IN_1X1" in opts and "MODEL.RESNETS.NUM_GROUPS" in opts
    verify_against(converted, report, meta_shapes(config, opts)).raise_if_failed()
    assert [r for _, r in report.ignored] == [report.ignored[0][1]] * 5  # the 5 cell anchors
    assert report.ignored[0][0] == "rpn.anchor_generator.cell_anchors.0"
    assert converted["head.scales.0.scale"].shape == ()
    assert converted["head.cls_score.weight"].shape[0] == 80


def test_torchvision_resnext_without_shipped_config_gets_overrides():
    src = torchvision_source(Fake(meta=True), Arch(depth=101, groups=32, width=8))
    converted, report = convert_state_dict("torchvision", src)
    config, opts = default_config(
        "torchvision", infer_model_arch(converted), os.path.join(ROOT, "configs")
    )
    assert config.endswith("COCO-Detection/atss_R_101_FPN_1x.yaml")
    assert opts[:6] == ["MODEL.RESNETS.DEPTH", "101", "MODEL.RESNETS.NUM_GROUPS", "32",
                        "MODEL.RESNETS.WIDTH_PER_GROUP", "8"]  # fmt: skip
    shapes = {
        k: s for k, s in meta_shapes(config, opts).items() if k.startswith("backbone.bottom_up.")
    }
    verify_against(converted, report, shapes).raise_if_failed()


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
def test_unknown_keys_missing_tensors_and_shape_mismatches_are_errors(tmp_path, capsys):
    src = state_of(mmdet_source(Fake(4), TINY_ARCH), "mmdet")
    src["bbox_head.extra_branch.weight"] = torch.zeros(3)
    del src["neck.fpn_convs.4.conv.bias"]
    src["bbox_head.atss_reg.weight"] = torch.zeros(5, 64, 3, 3)
    converted, report = convert_state_dict("mmdet", src)
    model = build("configs/COCO-Detection/atss_R_50_FPN_1x.yaml", TINY)
    verify_against(converted, report, {k: v.shape for k, v in model.state_dict().items()})
    with pytest.raises(ConversionError) as e:
        report.raise_if_failed()
    message = str(e.value)
    assert "'bbox_head.extra_branch.weight' matches no mmdet layout rule" in message
    assert "'backbone.top_block.p7.bias' is not filled" in message
    assert (
        "shape mismatch for 'head.bbox_pred.weight' (from 'bbox_head.atss_reg.weight')" in message
    )

    # The command line writes nothing and says why.
    src_path, out_path = str(tmp_path / "bad.pth"), str(tmp_path / "out.pth")
    torch.save({"state_dict": src, "meta": {}}, src_path)
    config = "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"
    tool = load_tool()
    assert tool.main(["--source", "mmdet", src_path, out_path, "--config-file", config, *TINY]) == 1
    out = capsys.readouterr()
    assert "conversion FAILED" in out.out and "nothing written" in out.err
    assert not os.path.exists(out_path)
    # Wrong --source: nothing matches.
    assert tool.main(["--source", "atss", src_path, out_path, "--no-verify"]) == 2
    assert "no 'model' entry" in capsys.readouterr().err


@pytest.mark.parametrize("depth, num_tensors", [(18, 100), (34, 180)])
def test_torchvision_basic_block_resnets_get_their_depth(tmp_path, capsys, depth, num_tensors):
    """ResNet-18/34 (basic blocks, no conv3) are not taken for a ResNet-50, although an R-34's
    res4 has 6 blocks like an R-50's. Tensors: the stem conv, 2 convs per block (8 blocks in an
    R-18, 16 in an R-34) and 3 shortcut convs, each with a BN of 4 tensors (its counter is
    dropped): 5 x 20 = 100 and 5 x 36 = 180."""
    torchvision = pytest.importorskip("torchvision")
    src_path, out_path = str(tmp_path / f"resnet{depth}.pth"), str(tmp_path / f"R-{depth}.pkl")
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    torch.save(model.state_dict(), src_path)
    tool = load_tool()
    assert tool.main(["--source", "torchvision", src_path, out_path]) == 0
    out = capsys.readouterr().out
    assert f"model: {num_tensors}/{num_tensors} tensors filled, 0 missing" in out
    assert "conversion OK" in out and os.path.exists(out_path)
    use = next(line for line in out.splitlines() if line.startswith("use: "))
    assert f"MODEL.RESNETS.DEPTH {depth} " in use
    assert "MODEL.RESNETS.RES2_OUT_CHANNELS 64" in use


def test_unknown_resnet_depth_fails_without_claiming_success(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    src_path, out_path = str(tmp_path / "resnet18.pth"), str(tmp_path / "R-18.pkl")
    state = torchvision.models.resnet18(weights=None).state_dict()
    # A third res4 block: no ResNet has 3 basic blocks there.
    state.update(
        {k.replace("layer3.1.", "layer3.2."): v for k, v in state.items() if "layer3.1." in k}
    )
    torch.save(state, src_path)
    tool = load_tool()
    assert tool.main(["--source", "torchvision", src_path, out_path]) == 1
    out = capsys.readouterr()
    assert "conversion OK" not in out.out + out.err
    assert "cannot tell the ResNet variant (res4 has 3 basic blocks, expected 2 or 6)" in out.err
    assert "pass --config-file" in out.err and "nothing written" in out.err
    assert not os.path.exists(out_path)


def test_torchvision_resnet18_with_the_cpu_config_drops_the_counters(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    src_path, out_path = str(tmp_path / "resnet18.pth"), str(tmp_path / "R-18.pkl")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src_path)
    tool = load_tool()
    # With the config of a BatchNorm ResNet-18 it converts; the counters are dropped.
    config = "configs/Custom/atss_R_18_FPN_cpu.yaml"
    assert tool.main(["--source", "torchvision", src_path, out_path, "--config-file", config]) == 0
    out = capsys.readouterr().out
    assert "conversion OK" in out and os.path.exists(out_path)
    # 100 weight tensors as in the test above; the model's 20 BN counters are not among them.
    assert "model: 100/100 tensors filled, 0 missing" in out
    assert "model: 20 BatchNorm step counters (num_batches_tracked) start at 0" in out
    counter_rows = [line for line in out.splitlines() if "num_batches_tracked" in line]
    counter_rows = [line for line in counter_rows if "(ignored)" in line]
    assert len(counter_rows) == 4  # the stem's, the blocks' bn1 and bn2, the shortcuts'
    assert all(line.endswith(BN_COUNTER_REASON) for line in counter_rows)


def test_a_wrong_source_names_the_layout_the_file_has(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.resnet18(weights=None).state_dict()
    tv_path, mmdet_path = str(tmp_path / "resnet18.pth"), str(tmp_path / "mmdet.pth")
    torch.save(state, tv_path)
    torch.save(
        {"state_dict": {"backbone." + k: v for k, v in state.items()}, "meta": {}}, mmdet_path
    )
    out_path = str(tmp_path / "out.pkl")
    tool = load_tool()
    for source, path, right in (
        ("mmdet", tv_path, "torchvision ResNet checkpoints (e.g. layer1.0.conv1.weight"),
        ("atss", tv_path, "torchvision ResNet checkpoints"),
        ("torchvision", mmdet_path, "mmdetection checkpoints (e.g. backbone.conv1.weight"),
    ):
        assert tool.main(["--source", source, path, out_path]) == 2
        err = capsys.readouterr().err
        assert f"none of its tensors has a name of the {source} layout" in err
        assert right in err and "nothing written" in err
        assert f"use --source {'torchvision' if 'torchvision' in right else 'mmdet'}" in err
        assert not os.path.exists(out_path)
