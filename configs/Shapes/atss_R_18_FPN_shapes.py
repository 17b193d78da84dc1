"""
atss_R_18_FPN_shapes.yaml as a LazyConfig: ATSS on the built-in synthetic "shapes" dataset,
trained from scratch on the CPU: ResNet-18 with BatchNorm, 64-channel FPN and head (GroupNorm,
groups of 2 channels) on P3-P5, anchors 4 x stride, 128x160 images at their native size, AdamW
with clipped gradients and a cosine schedule, bfloat16 mixed precision in the channels-last
layout.

    python train_net.py --config-file configs/Shapes/atss_R_18_FPN_shapes.py
"""

from detectron2.layers import ShapeSpec

from ..common.data.coco import dataloader
from ..common.models.atss import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cosine
from ..common.train import train

model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock has a single stride
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 3
model.head.conv_dims = [64, 64]
model.head_in_features = ["p3", "p4", "p5"]
model.backbone.top_block = None  # no P6 / P7
model.anchor_generator.sizes = [[32], [64], [128]]
model.anchor_generator.strides = [8, 16, 32]
model.num_classes = 3
# Mean and std of the shapes images (plain backgrounds, saturated objects).
model.pixel_mean = [90.0, 90.0, 90.0]
model.pixel_std = [90.0, 90.0, 90.0]
model.channels_last = True

dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
# The images are 128x160: keep them at that size.
dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.train.mapper.augmentations[0].max_size = 160
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 160
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

lr_multiplier = cosine(max_iter=840, warmup_iters=50, warmup_factor=0.01)

train.max_iter = 840
train.amp.enabled = True
train.checkpointer.period = 100000
train.device = "cpu"
train.seed = 0
train.output_dir = "output/demo"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
