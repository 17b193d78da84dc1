"""
Every config under configs/ merges and builds; the base configs carry the numbers of mmdetection's
configs/atss/atss_r50_fpn_1x_coco.py, the Original ones those of the authors' code (sfzhang15/ATSS).
"""

import glob
import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model

from atss_d2 import ATSS, add_atss_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
)


def load(path):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_configs_found():
    assert "configs/Base-ATSS.yaml" in CONFIGS
    assert "configs/COCO-Detection/atss_R_50_FPN_1x.yaml" in CONFIGS
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS)
def test_config_merges_and_builds(path):
    cfg = load(path)
    cfg.MODEL.DEVICE = "meta"  # full size, shapes only (tests/test_configs_run.py runs them)
    cfg.freeze()
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model, ATSS)
    assert model.head_in_features == list(cfg.MODEL.ATSS.IN_FEATURES)
    # one anchor per location on every level, one anchor generator level per head feature
    assert model.anchor_generator.num_cell_anchors == [1] * len(cfg.MODEL.ATSS.IN_FEATURES)
    assert len(model.head.scales) == len(cfg.MODEL.ATSS.IN_FEATURES)
    strides = [model.backbone.output_shape()[f].stride for f in cfg.MODEL.ATSS.IN_FEATURES]
    assert model.anchor_generator.strides == strides


# LazyConfig (.py) configs; configs/common/ holds the pieces they import, no model of its own.
LAZY_CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not os.path.relpath(p, ROOT).startswith(os.path.join("configs", "common", ""))
)


def test_lazy_configs_found():
    assert "configs/COCO-Detection/atss_R_50_FPN_1x.py" in LAZY_CONFIGS
    assert "configs/Shapes/atss_R_18_FPN_shapes.py" in LAZY_CONFIGS
    assert not [p for p in LAZY_CONFIGS if "/common/" in p]
    assert os.path.isfile(os.path.join(ROOT, "configs", "common", "models", "atss.py"))


@pytest.mark.parametrize("path", LAZY_CONFIGS)
def test_lazy_config_loads_and_builds(path):
    cfg = LazyConfig.load(os.path.join(ROOT, path))
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    with torch.device("meta"):  # full size, shapes only
        model = instantiate(cfg.model)
    assert isinstance(model, ATSS)
    features = list(model.head_in_features)
    assert model.anchor_generator.num_cell_anchors == [1] * len(features)
    assert len(model.head.scales) == len(features)
    strides = [model.backbone.output_shape()[f].stride for f in features]
    assert model.anchor_generator.strides == strides
    assert model.head.cls_score.out_channels == cfg.model.num_classes


def test_base_config_follows_the_spec():
    cfg = load("configs/COCO-Detection/atss_R_50_FPN_1x.yaml")
    m, a = cfg.MODEL, cfg.MODEL.ATSS
    assert m.META_ARCHITECTURE == "ATSS"
    assert m.RESNETS.DEPTH == 50 and m.BACKBONE.FREEZE_AT == 2
    # mmdetection's norm_eval=True, requires_grad=True: statistics frozen, affine trained
    assert m.RESNETS.NORM == "FrozenStatsBN"
    assert m.RESNETS.STRIDE_IN_1X1 is False  # torchvision-style (mmdetection)
    assert m.FPN.IN_FEATURES == ["res3", "res4", "res5"] and m.FPN.OUT_CHANNELS == 256
    assert a.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    # square anchors 8 x stride, mmdetection's offset 0
    assert m.ANCHOR_GENERATOR.SIZES == [[64], [128], [256], [512], [1024]]
    assert m.ANCHOR_GENERATOR.ASPECT_RATIOS == [[1.0]] and m.ANCHOR_GENERATOR.OFFSET == 0.0
    assert a.NUM_CONVS == 4 and a.NORM == "GN" and a.PRIOR_PROB == 0.01
    assert a.TOPK == 9 and a.FORCE_ONE_POSITIVE is False
    assert (a.FOCAL_LOSS_ALPHA, a.FOCAL_LOSS_GAMMA, a.REG_LOSS_WEIGHT) == (0.25, 2.0, 2.0)
    assert tuple(a.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0) and a.REGRESSION_TYPE == "BOX"
    assert a.SCORE_THRESH_TEST == 0.05 and a.TOPK_CANDIDATES_TEST == 1000
    assert a.NMS_THRESH_TEST == 0.6 and cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert a.FPN.TOP_BLOCK_IN_FEATURE == "p5"
    # valid flags per image, max(num_pos, 1) per image, CocoDataset's w/h >= 1 filter
    assert a.VALID_ANCHORS_PER_IMAGE is True and a.NUM_POS_NORM == "per_image"
    assert cfg.INPUT.MIN_BOX_SIZE == 1.0
    assert m.PIXEL_MEAN == [123.675, 116.28, 103.53] and m.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.INPUT.FORMAT == "RGB"
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == (16, 0.01, 0.9, 1e-4)
    assert tuple(s.STEPS) == (60000, 80000) and s.MAX_ITER == 90000
    assert (s.WARMUP_METHOD, s.WARMUP_ITERS, s.WARMUP_FACTOR) == ("linear", 500, 0.001)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    assert cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333


def test_original_config_follows_the_authors():
    cfg = load("configs/Original/atss_R_50_FPN_1x.yaml")
    m, a = cfg.MODEL, cfg.MODEL.ATSS
    assert m.RESNETS.STRIDE_IN_1X1 is True and m.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.INPUT.FORMAT == "BGR"
    assert a.CANDIDATE_RANKING_TEST == "cls_ctr" and a.SCORE_MODE == "sqrt"
    assert a.FPN.P7_RELU is True and a.TOWER_CONV_BIAS is True
    assert m.RESNETS.NORM == "FrozenBN" and a.REG_NORM_CLAMP is False
    assert a.VALID_ANCHORS_PER_IMAGE is False and a.NUM_POS_NORM == "total"
    assert cfg.INPUT.MIN_BOX_SIZE == 0.0
    s = cfg.SOLVER
    assert s.WARMUP_METHOD == "constant" and s.WARMUP_FACTOR == pytest.approx(1 / 3)
    assert s.BIAS_LR_FACTOR == 2.0 and s.WEIGHT_DECAY_BIAS == 0.0
    ms = load("configs/Original/atss_R_101_FPN_2x_ms.yaml")
    assert tuple(ms.INPUT.MIN_SIZE_TRAIN) == (640, 800)
    assert ms.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range"


def test_from_scratch_configs_train_batchnorm():
    # Trained from random weights: BatchNorm statistics must be learnt, not frozen.
    for path in (
        "configs/Shapes/atss_R_18_FPN_shapes.yaml",
        "configs/Custom/atss_R_18_FPN_cpu.yaml",
    ):
        cfg = load(path)
        assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0


def test_p6_is_computed_from_p5():
    cfg = load("configs/COCO-Detection/atss_R_50_FPN_1x.yaml")
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    model = build_model(cfg)
    top = model.backbone.top_block
    assert top.in_feature == "p5"
    assert top.p6.in_channels == cfg.MODEL.FPN.OUT_CHANNELS  # 256 (P5), not res5's 512
    strides = {k: v.stride for k, v in model.backbone.output_shape().items()}
    assert strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def test_placeholder_compiled_ops_fail_with_a_clear_error():
    import detectron2._C as C

    if not getattr(C, "ATSS_D2_PLACEHOLDER", False):
        pytest.skip("detectron2 was built with its compiled ops")
    with pytest.raises(AttributeError) as info:
        C.deform_conv_forward
    assert "installed without its compiled ops" in str(info.value)
    assert type(info.value) is not AttributeError  # a dedicated subclass
    # hasattr-style probes still work (AttributeError), and dunder lookups are plain
    assert not hasattr(C, "nms_rotated")


def test_placeholder_names_the_pycocotools_evaluation_for_the_fast_coco_ops():
    """The placeholder as tools/install_detectron2.py writes it (independent of the install)."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location(
        "install_detectron2", os.path.join(ROOT, "tools", "install_detectron2.py")
    )
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    placeholder = types.ModuleType("placeholder_C")
    exec(installer.PLACEHOLDER_C, placeholder.__dict__)
    with pytest.raises(AttributeError, match="use_fast_impl=False.*ATSSCOCOEvaluator"):
        placeholder.COCOevalEvaluateImages
    with pytest.raises(AttributeError) as info:
        placeholder.nms_rotated
    assert "source build" in str(info.value) and "use_fast_impl" not in str(info.value)
