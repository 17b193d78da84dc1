"""
atss_R_50_FPN_1x.yaml as a LazyConfig: mmdetection's atss_r50_fpn_1x_coco (39.4 box AP on COCO
val2017), from torchvision's ImageNet ResNet-50 as detectron2 hosts it.

    python train_net.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.py --num-gpus 8
"""

from ..common.data.coco import dataloader
from ..common.models.atss import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "output/atss_R_50_FPN_1x"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
