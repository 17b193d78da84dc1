#!/usr/bin/env python
"""
Run an ATSS model on images, a video or a webcam, and write them with the detections drawn.

    python demo/demo.py --config-file configs/Shapes/atss_R_18_FPN_shapes.yaml \
        --input img1.png "more/*.png" photos/ --output out/ --save-json out/detections.json \
        --opts MODEL.WEIGHTS output/demo/model_final.pth
    python demo/demo.py --config-file ... --video-input clip.mp4 --output out/clip.mp4 --opts ...
    python demo/demo.py --config-file ... --webcam --opts ...

The code is atss_d2/demo_cli.py (the parser) and atss_d2/demo.py (the logic), also installed as
the ``atss-demo`` command; see docs/DEMO.md.
"""

import atss_d2.warning_filters  # noqa: F401  (first: before the detectron2 imports)

# isort: split
from atss_d2.demo_cli import cli, get_parser, main, setup_cfg  # noqa: F401

if __name__ == "__main__":
    cli()
