"""
Checks of the values of ``MODEL.ATSS`` (and the anchor keys it depends on), run before a model
is built, so that a wrong value stops with a sentence naming the key, the value and what is
allowed instead of a traceback from deep inside a constructor.
"""

import math
from numbers import Real
from typing import Any, Iterable

from detectron2.config import CfgNode

__all__ = ["ConfigError", "check_atss_config"]

NORMS = ("", "GN", "BN", "SyncBN", "FrozenBN", "naiveSyncBN", "nnSyncBN", "LN")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and where it was set."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key} is {value!r}; {allowed}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        _fail(key, value, "expected a finite number")
    return float(value)


def _at_least(key: str, value: Any, low: float, integer: bool = True) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        _fail(key, value, f"expected an integer >= {low}")
    if _number(key, value) < low:
        _fail(key, value, f"expected {'an integer' if integer else 'a number'} >= {low}")


def _within(key: str, value: Any, low: float, high: float, open_ends: bool = False) -> None:
    v = _number(key, value)
    inside = low < v < high if open_ends else low <= v <= high
    if not inside:
        brackets = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
        _fail(key, value, f"expected a number in {brackets}")


def _one_of(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        _fail(key, value, f"expected one of {', '.join(map(repr, allowed))}")


def _per_level(key: str, value: Any, num_levels: int) -> None:
    """detectron2's anchor generator takes one entry per level, or one entry for all."""
    if not isinstance(value, (list, tuple)) or len(value) not in (1, num_levels):
        _fail(
            key,
            value,
            f"expected one list per level of MODEL.ATSS.IN_FEATURES ({num_levels} levels), or "
            "one list for all",
        )
    for entry in value:
        if not isinstance(entry, (list, tuple)) or not entry:
            _fail(key, value, "expected a non-empty list of numbers per level, e.g. [[64], [128]]")
        for v in entry:
            if _number(key, v) <= 0:
                _fail(key, value, "expected positive numbers")


def _one_per_min_size(key: str, value: Any, num_sizes: int) -> None:
    if not isinstance(value, (list, tuple)) or len(value) not in (0, num_sizes):
        _fail(
            key,
            value,
            f"expected one entry per TEST.AUG.MIN_SIZES entry ({num_sizes}), or [] for none",
        )


def _check_tta_scales(cfg: CfgNode) -> None:
    """The per-scale lists of the test-time augmentation, against ``TEST.AUG.MIN_SIZES``."""
    a, num_sizes = cfg.MODEL.ATSS, len(cfg.TEST.AUG.MIN_SIZES)
    _one_per_min_size("MODEL.ATSS.TTA_MAX_SIZES", a.TTA_MAX_SIZES, num_sizes)
    for size in a.TTA_MAX_SIZES:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            _fail("MODEL.ATSS.TTA_MAX_SIZES", a.TTA_MAX_SIZES, "expected integers >= 1 (pixels)")
    key, ranges = "MODEL.ATSS.TTA_SCALE_RANGES", a.TTA_SCALE_RANGES
    _one_per_min_size(key, ranges, num_sizes)
    for entry in ranges:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            _fail(
                key, ranges, "expected one [low, high] pair per scale, e.g. [[0, 256], [64, 10000]]"
            )
        low, high = (_number(key, v) for v in entry)
        if not 0 <= low < high:
            _fail(key, ranges, f"expected 0 <= low < high in each [low, high], got {list(entry)}")


def check_atss_config(cfg: CfgNode) -> None:
    """
    Check every ``MODEL.ATSS`` value (ranges, allowed names, list lengths), and the anchor
    sizes and aspect ratios (one list per head level). Whether the backbone produces
    ``MODEL.ATSS.IN_FEATURES`` is checked once it is built (:meth:`ATSS.from_config`).

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    a = cfg.MODEL.ATSS
    _at_least("MODEL.ATSS.NUM_CLASSES", a.NUM_CLASSES, 1)
    if not a.IN_FEATURES or not all(isinstance(f, str) for f in a.IN_FEATURES):
        _fail("MODEL.ATSS.IN_FEATURES", a.IN_FEATURES, "expected a list of feature names")
    if len(set(a.IN_FEATURES)) != len(a.IN_FEATURES):
        _fail("MODEL.ATSS.IN_FEATURES", a.IN_FEATURES, "expected each feature once")
    _at_least("MODEL.ATSS.NUM_CONVS", a.NUM_CONVS, 0)
    _one_of("MODEL.ATSS.NORM", a.NORM, NORMS)
    if a.NORM == "GN" and a.NUM_CONVS > 0 and cfg.MODEL.FPN.OUT_CHANNELS % 32:
        _fail(
            "MODEL.ATSS.NORM",
            a.NORM,
            f"GroupNorm's 32 groups need MODEL.FPN.OUT_CHANNELS divisible by 32, got "
            f"{cfg.MODEL.FPN.OUT_CHANNELS}",
        )
    _within("MODEL.ATSS.PRIOR_PROB", a.PRIOR_PROB, 0.0, 1.0, open_ends=True)
    _at_least("MODEL.ATSS.TOPK", a.TOPK, 1)
    _at_least("MODEL.ATSS.MATCHER_GT_CHUNK", a.MATCHER_GT_CHUNK, 1)
    _within("MODEL.ATSS.FOCAL_LOSS_ALPHA", a.FOCAL_LOSS_ALPHA, 0.0, 1.0)
    _at_least("MODEL.ATSS.FOCAL_LOSS_GAMMA", a.FOCAL_LOSS_GAMMA, 0.0, integer=False)
    _at_least("MODEL.ATSS.REG_LOSS_WEIGHT", a.REG_LOSS_WEIGHT, 0.0, integer=False)
    weights = a.BBOX_REG_WEIGHTS
    if (
        not isinstance(weights, (list, tuple))
        or len(weights) != 4
        or any(_number("MODEL.ATSS.BBOX_REG_WEIGHTS", w) <= 0 for w in weights)
    ):
        _fail("MODEL.ATSS.BBOX_REG_WEIGHTS", weights, "expected four positive numbers")
    _one_of("MODEL.ATSS.REGRESSION_TYPE", a.REGRESSION_TYPE, ("BOX", "POINT"))
    _one_of("MODEL.ATSS.NUM_POS_NORM", a.NUM_POS_NORM, ("per_image", "total"))
    _within("MODEL.ATSS.SCORE_THRESH_TEST", a.SCORE_THRESH_TEST, 0.0, 1.0)
    _at_least("MODEL.ATSS.TOPK_CANDIDATES_TEST", a.TOPK_CANDIDATES_TEST, 1)
    _one_of("MODEL.ATSS.CANDIDATE_RANKING_TEST", a.CANDIDATE_RANKING_TEST, ("cls", "cls_ctr"))
    _within("MODEL.ATSS.NMS_THRESH_TEST", a.NMS_THRESH_TEST, 0.0, 1.0)
    _one_of("MODEL.ATSS.SCORE_MODE", a.SCORE_MODE, ("sqrt", "product"))
    _at_least("MODEL.ATSS.SIZE_DIVISIBILITY", a.SIZE_DIVISIBILITY, 0)
    if not isinstance(a.CUDA_GRAPHS, bool):
        _fail("MODEL.ATSS.CUDA_GRAPHS", a.CUDA_GRAPHS, "expected True or False")
    _at_least("MODEL.ATSS.CUDA_GRAPHS_MAX_SHAPES", a.CUDA_GRAPHS_MAX_SHAPES, 1)
    _one_of("MODEL.ATSS.TTA_MERGE", a.TTA_MERGE, ("nms", "vote", "soft_vote"))
    _within("MODEL.ATSS.TTA_VOTE_THRESH", a.TTA_VOTE_THRESH, 0.0, 1.0)
    _within("MODEL.ATSS.TTA_SOFT_VOTE_SCORE_THRESH", a.TTA_SOFT_VOTE_SCORE_THRESH, 0.0, 1.0)
    _at_least("MODEL.ATSS.TTA_DETECTIONS_PER_IMAGE", a.TTA_DETECTIONS_PER_IMAGE, 0)
    _check_tta_scales(cfg)
    if not isinstance(a.FPN.TOP_BLOCK_IN_FEATURE, str) or not a.FPN.TOP_BLOCK_IN_FEATURE:
        _fail("MODEL.ATSS.FPN.TOP_BLOCK_IN_FEATURE", a.FPN.TOP_BLOCK_IN_FEATURE, "expected a name")
    _at_least("TEST.DETECTIONS_PER_IMAGE", cfg.TEST.DETECTIONS_PER_IMAGE, 1)
    levels = len(a.IN_FEATURES)
    _per_level("MODEL.ANCHOR_GENERATOR.SIZES", cfg.MODEL.ANCHOR_GENERATOR.SIZES, levels)
    ratios = cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    _per_level("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", ratios, levels)
    if a.REGRESSION_TYPE == "POINT":
        anchors = [len(s) * len(r) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES for r in ratios]
        if max(anchors) != 1:
            _fail(
                "MODEL.ATSS.REGRESSION_TYPE",
                a.REGRESSION_TYPE,
                "'POINT' needs one anchor per location (one size and one aspect ratio per level)",
            )
