"""ResNet / ResNeXt builder whose deformable stages run on torchvision's ``deform_conv2d`` and
which also takes ``MODEL.RESNETS.NORM`` "FrozenStatsBN" (mmdetection's ``norm_eval``)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

from .batch_norm import convert_to_frozen_stats
from .deform import DeformBottleneckBlock

__all__ = ["FROZEN_STATS_BN", "build_atss_resnet_backbone"]

# MODEL.RESNETS.NORM of mmdetection's backbone normalisation (BatchNorm statistics frozen,
# affine weight and bias trained): atss_d2.modeling.batch_norm.FrozenStatsBatchNorm2d.
FROZEN_STATS_BN = "FrozenStatsBN"

_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@BACKBONE_REGISTRY.register()
def build_atss_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    detectron2's ResNet from ``MODEL.RESNETS``. Without deformable stages this is exactly
    ``build_resnet_backbone``. Stages flagged in ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` (res2..res5)
    use :class:`DeformBottleneckBlock` (same parameter names as detectron2's, so the same
    checkpoints load), which needs no compiled detectron2 ops.

    ``MODEL.RESNETS.NORM`` takes detectron2's names and "FrozenStatsBN": the network is built
    with BatchNorm, the stages below ``MODEL.BACKBONE.FREEZE_AT`` become ``FrozenBatchNorm2d``
    (detectron2's freezing), and the BatchNorm of the other stages becomes
    :class:`~atss_d2.modeling.batch_norm.FrozenStatsBatchNorm2d`: statistics frozen, weight and
    bias trained, as mmdetection's ``norm_eval=True`` with ``requires_grad=True``.
    """
    if cfg.MODEL.RESNETS.NORM == FROZEN_STATS_BN:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.NORM = "BN"
        return convert_to_frozen_stats(_build(cfg, input_shape))
    return _build(cfg, input_shape)


def _build(cfg, input_shape: ShapeSpec) -> ResNet:
    r = cfg.MODEL.RESNETS
    if not any(r.DEFORM_ON_PER_STAGE):
        return build_resnet_backbone(cfg, input_shape)
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs a bottleneck ResNet (DEPTH 50, 101 or 152), "
            f"got DEPTH={r.DEPTH}"
        )
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    if len(r.DEFORM_ON_PER_STAGE) != 4:
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 flags (res2, res3, res4, res5), got "
            f"{r.DEFORM_ON_PER_STAGE}"
        )

    stem = BasicStem(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
        stage = index + 2  # res2..res5
        dilation = r.RES5_DILATION if stage == 5 else 1
        # res2 follows the stem's max-pool; a dilated res5 keeps the resolution of res4.
        first_stride = 1 if stage == 2 or dilation == 2 else 2
        kwargs = dict(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=in_channels,
            out_channels=out_channels,
            bottleneck_channels=bottleneck_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=dilation,
        )
        if r.DEFORM_ON_PER_STAGE[index]:
            kwargs.update(
                block_class=DeformBottleneckBlock,
                deform_modulated=r.DEFORM_MODULATED,
                deform_num_groups=r.DEFORM_NUM_GROUPS,
            )
        else:
            kwargs.update(block_class=BottleneckBlock)
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    # ResNet drops the stages after the last one named in OUT_FEATURES.
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
