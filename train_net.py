#!/usr/bin/env python
"""
Train and evaluate ATSS with detectron2.

    python train_net.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model.pth
    python train_net.py --config-file configs/Custom/atss_R_18_FPN_cpu.yaml \
        --voc-dataset custom_train data/Annotations data/JPEGImages MODEL.ATSS.NUM_CLASSES 3

The code is atss_d2/train_net.py (detectron2's train_net.py shape: setup, main, get_parser), also
installed as the ``atss-train`` command; the trainer is atss_d2.engine.ATSSTrainer.
"""

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from atss_d2.train_net import Trainer, cli, get_parser, main, setup  # noqa: F401

if __name__ == "__main__":
    cli()
