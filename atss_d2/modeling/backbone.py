"""ResNet-FPN backbone with P3..P7, P6 computed from P5 (both ATSS references)."""

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from torch import nn

from .resnet import build_atss_resnet_backbone

__all__ = ["LastLevelP6P7FromP5", "build_atss_resnet_fpn_backbone"]


class LastLevelP6P7FromP5(nn.Module):
    """
    P6 = conv3x3/s2(x), P7 = conv3x3/s2(relu(P6)) or conv3x3/s2(P6), where x is P5 (or res5).

    detectron2's ``LastLevelP6P7`` always applies the ReLU; mmdetection's
    ``FPN(add_extra_convs="on_output")`` does not, so it is a switch here. With
    ``num_levels=1`` only P6 is built (no parameter is left without a gradient, as DDP needs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_feature: str = "p5",
        p7_relu: bool = True,
        num_levels: int = 2,
    ):
        super().__init__()
        if num_levels not in (1, 2):
            raise ValueError(f"LastLevelP6P7FromP5: num_levels must be 1 or 2, got {num_levels}")
        self.num_levels = num_levels
        self.in_feature = in_feature
        self.p7_relu = p7_relu
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        convs = [self.p6]
        if num_levels == 2:
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
            convs.append(self.p7)
        for module in convs:
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x):
        p6 = self.p6(x)
        if self.num_levels == 1:
            return [p6]
        p7 = self.p7(F.relu(p6) if self.p7_relu else p6)
        return [p6, p7]


@BACKBONE_REGISTRY.register()
def build_atss_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet (``MODEL.RESNETS``) + FPN (``MODEL.FPN``) giving p3..p7; P6/P7 from
    ``MODEL.ATSS.FPN.TOP_BLOCK_IN_FEATURE`` ("p5" by default), ReLU before P7 per
    ``MODEL.ATSS.FPN.P7_RELU``. Deformable stages (``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) run on
    torchvision's ``deform_conv2d`` (see :func:`build_atss_resnet_backbone`).

    Only the extra levels that ``MODEL.ATSS.IN_FEATURES`` uses are built: none without "p6"
    and "p7", P6 alone without "p7".
    """
    bottom_up = build_atss_resnet_backbone(cfg, input_shape)
    head_features = cfg.MODEL.ATSS.IN_FEATURES
    num_extra = 2 if "p7" in head_features else 1 if "p6" in head_features else 0
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_feature = cfg.MODEL.ATSS.FPN.TOP_BLOCK_IN_FEATURE
    if in_feature == "p5":
        in_channels = out_channels
    elif in_feature in bottom_up.output_shape():
        in_channels = bottom_up.output_shape()[in_feature].channels
    else:
        raise ValueError(
            f"MODEL.ATSS.FPN.TOP_BLOCK_IN_FEATURE={in_feature!r}: expected 'p5' or one of "
            f"{sorted(bottom_up.output_shape())}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=(
            LastLevelP6P7FromP5(
                in_channels,
                out_channels,
                in_feature=in_feature,
                p7_relu=cfg.MODEL.ATSS.FPN.P7_RELU,
                num_levels=num_extra,
            )
            if num_extra
            else None
        ),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
