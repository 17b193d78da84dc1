"""The ATSS head: classification and regression towers shared across levels."""

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import build_anchor_generator
from torch import Tensor, nn

from ..config_checks import NORMS

__all__ = ["ATSSHead", "Scale"]

# Initial bias of the box regression with REGRESSION_TYPE "POINT" (the authors' value).
POINT_BIAS_INIT = 4.0


class Scale(nn.Module):
    """A learnable scalar that multiplies its input (one per FPN level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower_norm(norm: str, channels: int):
    if norm not in NORMS:
        raise ValueError(f"norm (MODEL.ATSS.NORM) must be one of {list(NORMS)}, got {norm!r}")
    if norm == "GN" and channels % 32 != 0:
        raise ValueError(
            f"MODEL.ATSS.NORM='GN' uses 32 groups, so the head width ({channels} channels, "
            "MODEL.FPN.OUT_CHANNELS) must be a multiple of 32"
        )
    return get_norm(norm, channels)


class ATSSHead(nn.Module):
    """
    Two towers of ``num_convs`` x [3x3 conv, norm, ReLU] on every level; class logits from the
    classification tower, box regression and centerness from the regression tower, the box
    regression multiplied by a learnable per-level scale.

    The towers are built directly (not through ``RetinaNetHead``), so GroupNorm works on
    detectron2 0.6, whose ``RetinaNetHead`` probes ``get_norm(norm, 1)``.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int = 1,
        conv_dims: List[int],
        norm: str = "GN",
        conv_bias: bool = False,
        prior_prob: float = 0.01,
        regression_type: str = "BOX",
        dcn_in_tower: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the input features, one per level (equal channels).
            num_classes: number of foreground classes.
            num_anchors: anchors per location (1 for ATSS).
            conv_dims: output channels of each tower conv.
            norm: tower normalization ("GN", "" or any name of detectron2's ``get_norm``).
            conv_bias: whether tower convs have a bias.
            prior_prob: foreground prior used to initialize the classification bias.
            regression_type: "BOX" or "POINT" (ReLU after the scale, distances are >= 0; the
                box regression bias starts at 4, as the authors' head).
            dcn_in_tower: make the last conv of each tower a deformable conv.
        """
        super().__init__()
        if len({s.channels for s in input_shape}) != 1:
            raise ValueError(f"ATSSHead needs equal channels on all levels, got {input_shape}")
        if regression_type not in ("BOX", "POINT"):
            raise ValueError(
                f"MODEL.ATSS.REGRESSION_TYPE must be 'BOX' or 'POINT', got {regression_type!r}"
            )
        if regression_type == "POINT" and num_anchors != 1:
            raise ValueError("MODEL.ATSS.REGRESSION_TYPE='POINT' needs one anchor per location")
        self.num_classes = num_classes
        self.regression_type = regression_type
        in_channels = input_shape[0].channels

        def tower():
            layers = []
            channels = in_channels
            for i, out in enumerate(conv_dims):
                if dcn_in_tower and i == len(conv_dims) - 1:
                    from .deform import DeformConvWithOffset

                    layers.append(
                        DeformConvWithOffset(
                            channels, out, kernel_size=3, padding=1, bias=conv_bias
                        )
                    )
                else:
                    layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=conv_bias))
                if norm:
                    layers.append(_tower_norm(norm, out))
                layers.append(nn.ReLU())
                channels = out
            return nn.Sequential(*layers)

        self.cls_subnet = tower()
        self.bbox_subnet = tower()
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        self.centerness = nn.Conv2d(last, num_anchors, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        nn.init.constant_(self.cls_score.bias, bias_value)
        if regression_type == "POINT":
            # As the authors' ATSSHead (atss_core/modeling/rpn/atss/atss.py) for POINT: every
            # distance starts at 4 strides, so with the 8 x stride anchors the first boxes are
            # the anchors themselves (a zero bias would start from points).
            nn.init.constant_(self.bbox_pred.bias, POINT_BIAS_INIT)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ATSS.NUM_CLASSES,
            "num_anchors": _num_anchors(cfg, input_shape),
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.ATSS.NUM_CONVS,
            "norm": cfg.MODEL.ATSS.NORM,
            "conv_bias": cfg.MODEL.ATSS.TOWER_CONV_BIAS,
            "prior_prob": cfg.MODEL.ATSS.PRIOR_PROB,
            "regression_type": cfg.MODEL.ATSS.REGRESSION_TYPE,
            "dcn_in_tower": cfg.MODEL.ATSS.DCN_IN_TOWER,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features: one (N, C, Hi, Wi) tensor per level.

        Returns:
            logits: per level (N, A*K, Hi, Wi); bbox_reg: per level (N, A*4, Hi, Wi), already
            multiplied by the level's scale; centerness: per level (N, A, Hi, Wi).
        """
        logits, bbox_reg, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feat = self.cls_subnet(feature)
            reg_feat = self.bbox_subnet(feature)
            logits.append(self.cls_score(cls_feat))
            reg = self.scales[level](self.bbox_pred(reg_feat))
            if self.regression_type == "POINT":
                reg = F.relu(reg)
            bbox_reg.append(reg)
            centerness.append(self.centerness(reg_feat))
        return logits, bbox_reg, centerness


def _num_anchors(cfg, input_shape: List[ShapeSpec]) -> int:
    num = build_anchor_generator(cfg, input_shape).num_cell_anchors
    if len(set(num)) != 1:
        raise ValueError(
            "MODEL.ANCHOR_GENERATOR must give the same number of anchors on every level, got "
            f"{num} (SIZES={cfg.MODEL.ANCHOR_GENERATOR.SIZES}, "
            f"ASPECT_RATIOS={cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS})"
        )
    return num[0]
