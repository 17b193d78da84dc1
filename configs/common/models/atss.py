"""
ATSS with a ResNet-50 FPN (P3-P7), mmdetection's setup (atss_r50_fpn_1x_coco.py): the model of
configs/Base-ATSS.yaml with MODEL.RESNETS.DEPTH 50, every argument spelt out.

torchvision-style ResNet (stride in the 3x3 conv), BatchNorm statistics frozen with weight and
bias trained after res2 (stem and res2 frozen), RGB input with ImageNet mean/std, anchors 8 x
stride centred at stride * i, each image of a padded batch trained on its own valid anchors,
classification loss normalised by max(positives, 1) per image.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet

from atss_d2.modeling import (
    ATSS,
    ATSSBoxCoder,
    ATSSHead,
    ATSSMatcher,
    FrozenStatsBatchNorm2d,
    LastLevelP6P7FromP5,
)

model = L(ATSS)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            # MODEL.RESNETS.NORM "FrozenStatsBN": freeze_at turns the stem's and res2's into
            # FrozenBatchNorm2d, as detectron2 freezes any BatchNorm.
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm=FrozenStatsBatchNorm2d),
            stages=L(ResNet.make_default_stages)(
                depth=50,
                stride_in_1x1=False,  # ResNet-18/34 (BasicBlock) take no stride_in_1x1
                norm=FrozenStatsBatchNorm2d,
            ),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        norm="",
        # P6 from P5, no ReLU before P7 (mmdetection's add_extra_convs="on_output").
        top_block=L(LastLevelP6P7FromP5)(
            in_channels="${..out_channels}",
            out_channels="${..out_channels}",
            in_feature="p5",
            p7_relu=False,
            num_levels=2,
        ),
        fuse_type="sum",
    ),
    head=L(ATSSHead)(
        # One entry per head feature, with the FPN's channels.
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        num_anchors=1,
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        conv_bias=False,
        prior_prob=0.01,
        regression_type="BOX",
        dcn_in_tower=False,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[[1.0]],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box_coder=L(ATSSBoxCoder)(
        weights=[10.0, 10.0, 5.0, 5.0], legacy_plus_one="${..legacy_plus_one}"
    ),
    matcher=L(ATSSMatcher)(topk=9, force_one_positive=False, gt_chunk_size=256),
    num_classes=80,
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    reg_loss_weight=2.0,
    reg_norm_clamp=True,
    num_pos_norm="per_image",
    valid_anchors_per_image=True,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    candidate_ranking="cls",
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    score_mode="sqrt",
    legacy_plus_one=False,
    size_divisibility=32,
    channels_last=False,
    cuda_graphs=False,
    cuda_graphs_max_shapes=8,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
