from .atss import ATSS
from .backbone import LastLevelP6P7FromP5, build_atss_resnet_fpn_backbone
from .box_coder import ATSSBoxCoder, ATSSPointCoder
from .head import ATSSHead, Scale
from .matcher import ATSSMatcher, MatchResult
from .tta import ATSSWithTTA, merge_detections

__all__ = [
    "ATSS",
    "ATSSBoxCoder",
    "ATSSHead",
    "ATSSMatcher",
    "ATSSPointCoder",
    "ATSSWithTTA",
    "LastLevelP6P7FromP5",
    "MatchResult",
    "Scale",
    "build_atss_resnet_fpn_backbone",
    "merge_detections",
]
