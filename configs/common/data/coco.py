"""
COCO 2017 with atss_d2's dataset mapper, as the YAML configs read it: shorter side 800 (longest
1333), horizontal flips, RGB, boxes under 1 px dropped (mmdetection's filter), batch 16.

Used with a ``model`` and a ``train`` section: the mappers check category ids against
``model.num_classes`` and the evaluator writes under ``train.output_dir``.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from atss_d2.data import build_atss_train_loader
from atss_d2.data.mapper import ATSSDatasetMapper
from atss_d2.evaluation import ATSSCOCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_atss_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=True),
    mapper=L(ATSSDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(800,), max_size=1333, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
        num_classes="${model.num_classes}",
        skip_unreadable=False,
        min_box_size=1.0,
    ),
    total_batch_size=16,
    aspect_ratio_grouping=True,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(ATSSDatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
        ],
        image_format="${...train.mapper.image_format}",
        num_classes="${model.num_classes}",
        min_box_size="${...train.mapper.min_box_size}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(ATSSCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
)
