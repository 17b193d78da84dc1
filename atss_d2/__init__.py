"""atss_d2: ATSS (Adaptive Training Sample Selection, CVPR 2020) for detectron2.

``import atss_d2`` registers the ``ATSS`` meta-architecture and the
``build_atss_resnet_fpn_backbone`` backbone with detectron2's registries, and the built-in
``shapes_train`` / ``shapes_val`` datasets (drawn on first use). It first installs the filters of
:mod:`atss_d2.warning_filters` (third-party warnings a user cannot act on).
"""

from . import warning_filters  # noqa: F401  (first: before anything imports detectron2)

# isort: split
from . import data  # noqa: F401  (registration: shapes_train, shapes_val)
from .config import add_atss_config
from .modeling import (  # noqa: F401  (registration)
    ATSS,
    ATSSBoxCoder,
    ATSSHead,
    ATSSMatcher,
    ATSSPointCoder,
    ATSSWithTTA,
    build_atss_resnet_fpn_backbone,
)

__version__ = "0.1.0"
__all__ = [
    "add_atss_config",
    "ATSS",
    "ATSSHead",
    "ATSSMatcher",
    "ATSSBoxCoder",
    "ATSSPointCoder",
    "ATSSWithTTA",
    "build_atss_resnet_fpn_backbone",
]
