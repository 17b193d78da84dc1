from .anchor_generator import ATSSLegacyAnchorGenerator
from .atss import ATSS
from .backbone import LastLevelP6P7FromP5, build_atss_resnet_fpn_backbone
from .batch_norm import FrozenStatsBatchNorm2d
from .box_coder import ATSSBoxCoder, ATSSPointCoder
from .deform import DeformBottleneckBlock, DeformConv, DeformConvWithOffset
from .head import ATSSHead, Scale
from .matcher import ATSSMatcher, MatchResult
from .resnet import build_atss_resnet_backbone
from .tta import ATSSDatasetMapperTTA, ATSSWithTTA, box_vote, in_size_range, merge_detections

__all__ = [
    "ATSS",
    "ATSSBoxCoder",
    "ATSSDatasetMapperTTA",
    "ATSSHead",
    "ATSSLegacyAnchorGenerator",
    "ATSSMatcher",
    "ATSSPointCoder",
    "ATSSWithTTA",
    "DeformBottleneckBlock",
    "DeformConv",
    "DeformConvWithOffset",
    "FrozenStatsBatchNorm2d",
    "LastLevelP6P7FromP5",
    "MatchResult",
    "Scale",
    "box_vote",
    "build_atss_resnet_backbone",
    "build_atss_resnet_fpn_backbone",
    "in_size_range",
    "merge_detections",
]
