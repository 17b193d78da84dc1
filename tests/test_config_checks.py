"""Every MODEL.ATSS value is checked before the model is built: one rule per case, each error a
ConfigError naming the key, the value and what is allowed."""

import pytest
from detectron2.modeling import build_model
from tiny_setup import small_cfg

from atss_d2.config_checks import ConfigError, check_atss_config

CASES = [
    # (key, bad value as on the command line, words of the message)
    ("MODEL.ATSS.NUM_CLASSES", "0", "expected an integer >= 1"),
    ("MODEL.ATSS.IN_FEATURES", "[]", "expected a list of feature names"),
    ("MODEL.ATSS.IN_FEATURES", "['p3', 'p3']", "expected each feature once"),
    ("MODEL.ATSS.NUM_CONVS", "-1", "expected an integer >= 0"),
    ("MODEL.ATSS.NORM", "'GroupNorm'", "expected one of '', 'GN', 'BN'"),
    ("MODEL.ATSS.PRIOR_PROB", "1.0", "expected a number in (0.0, 1.0)"),
    ("MODEL.ATSS.PRIOR_PROB", "0.0", "expected a number in (0.0, 1.0)"),
    ("MODEL.ATSS.TOPK", "0", "expected an integer >= 1"),
    ("MODEL.ATSS.MATCHER_GT_CHUNK", "0", "expected an integer >= 1"),
    ("MODEL.ATSS.FOCAL_LOSS_ALPHA", "1.5", "expected a number in [0.0, 1.0]"),
    ("MODEL.ATSS.FOCAL_LOSS_GAMMA", "-2.0", "expected a number >= 0.0"),
    ("MODEL.ATSS.REG_LOSS_WEIGHT", "-1.0", "expected a number >= 0.0"),
    ("MODEL.ATSS.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0)", "expected four positive numbers"),
    ("MODEL.ATSS.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0, 0.0)", "expected four positive numbers"),
    ("MODEL.ATSS.REGRESSION_TYPE", "'point'", "expected one of 'BOX', 'POINT'"),
    ("MODEL.ATSS.NUM_POS_NORM", "'per_gpu'", "expected one of 'per_image', 'total'"),
    ("MODEL.ATSS.SCORE_THRESH_TEST", "1.2", "expected a number in [0.0, 1.0]"),
    ("MODEL.ATSS.TOPK_CANDIDATES_TEST", "0", "expected an integer >= 1"),
    ("MODEL.ATSS.CANDIDATE_RANKING_TEST", "'ctr'", "expected one of 'cls', 'cls_ctr'"),
    ("MODEL.ATSS.NMS_THRESH_TEST", "-0.1", "expected a number in [0.0, 1.0]"),
    ("MODEL.ATSS.SCORE_MODE", "'mean'", "expected one of 'sqrt', 'product'"),
    ("MODEL.ATSS.SIZE_DIVISIBILITY", "-32", "expected an integer >= 0"),
    ("MODEL.ATSS.TTA_MERGE", "'soft'", "expected one of 'nms', 'vote'"),
    ("MODEL.ATSS.TTA_VOTE_THRESH", "2.0", "expected a number in [0.0, 1.0]"),
    ("TEST.DETECTIONS_PER_IMAGE", "0", "expected an integer >= 1"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64]]", "one list per level"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [], [256], [512]]", "non-empty list"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [-128], [256], [512]]", "positive numbers"),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0], [1.0]]", "one list per level"),
]


@pytest.mark.parametrize("key,value,words", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_each_rule(key, value, words):
    cfg = small_cfg(key, value)
    with pytest.raises(ConfigError) as info:
        check_atss_config(cfg)
    message = str(info.value)
    assert message.startswith(f"{key} is ")
    assert words in message


def test_shipped_defaults_pass():
    check_atss_config(small_cfg())


def test_group_norm_needs_channels_divisible_by_32():
    cfg = small_cfg("MODEL.FPN.OUT_CHANNELS", "48")
    with pytest.raises(ConfigError, match="MODEL.FPN.OUT_CHANNELS divisible by 32, got 48"):
        check_atss_config(cfg)


def test_point_regression_needs_one_anchor_per_location():
    cfg = small_cfg(
        "MODEL.ATSS.REGRESSION_TYPE",
        "'POINT'",
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        "[[0.5, 1.0]]",
    )
    with pytest.raises(ConfigError, match="'POINT' needs one anchor per location"):
        check_atss_config(cfg)


def test_building_the_model_checks_first():
    # Unchecked, TOPK 0 would fail inside the matcher's constructor with a bare ValueError.
    with pytest.raises(ConfigError, match="MODEL.ATSS.TOPK is 0; expected an integer >= 1"):
        build_model(small_cfg("MODEL.ATSS.TOPK", "0"))
    # Features the backbone does not produce are named with those it has.
    with pytest.raises(
        ConfigError, match=r"IN_FEATURES names \['p8'\], which the backbone.*'p3', 'p4', 'p5'"
    ):
        build_model(
            small_cfg(
                "MODEL.ATSS.IN_FEATURES",
                "['p3', 'p8']",
                "MODEL.ANCHOR_GENERATOR.SIZES",
                "[[32], [64]]",
            )
        )
