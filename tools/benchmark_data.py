#!/usr/bin/env python
"""
Data-pipeline throughput: images per second through atss_d2's ``ATSSDatasetMapper`` against
detectron2's ``DatasetMapper(cfg, is_train=True)``, both built from the same config (by default
``configs/COCO-Detection/atss_R_50_FPN_1x.yaml``: ResizeShortestEdge 800 / max 1333, horizontal
flip), on COCO-like JPEGs written to a temporary directory, with 0 and 2 loader workers.

The loader is a plain torch ``DataLoader`` over detectron2's ``MapDataset``/``DatasetFromList``,
batch size 1, detectron2's ``trivial_batch_collator``, sequential order: the per-image work of
``build_detection_train_loader`` without its infinite sampler (see ``atss_d2.data.benchmark``).
Each worker count gets one warm-up pass per mapper, then ``--repeats`` timed passes interleaved
across the mappers; the table shows the median images/s and the ratio atss_d2 / detectron2.

    python tools/benchmark_data.py --json output/benchmark/data.json
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from tqdm import tqdm

from atss_d2 import add_atss_config
from atss_d2.data.benchmark import benchmark_mappers, write_coco_like_images
from atss_d2.data.mapper import ATSSDatasetMapper
from atss_d2.utils import count_arg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/, for bench_common
from bench_common import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "COCO-Detection" / "atss_R_50_FPN_1x.yaml"
TARGET = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=str(DEFAULT_CONFIG))
    p.add_argument("--num-images", type=count_arg, default=48)
    p.add_argument("--size", default="640x480", help="WxH; every other image is HxW")
    p.add_argument("--workers", default="0,2", help="comma-separated loader worker counts")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per mapper and workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the numbers and machine info here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def build_cfg(config_file: str, opts: List[str]):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def ratios(rows):
    by = {(r["workers"], r["mapper"]): r["median_images_per_s"] for r in rows}
    return {w: by[(w, "atss_d2")] / by[(w, "detectron2")] for w, m in by if m == "atss_d2"}


def print_table(rows) -> List[str]:
    ratio = ratios(rows)
    lines = [
        "| workers | atss_d2 img/s | detectron2 img/s | atss_d2 / detectron2 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    by = {(r["workers"], r["mapper"]): r["median_images_per_s"] for r in rows}
    for w in ratio:
        lines.append(
            f"| {w} | {by[(w, 'atss_d2')]:.1f} | {by[(w, 'detectron2')]:.1f} | {ratio[w]:.3f} |"
        )
    print("\n".join(lines))
    return lines


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    width, height = (int(v) for v in args.size.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    mappers = {
        "atss_d2": ATSSDatasetMapper(cfg, is_train=True),
        "detectron2": DatasetMapper(cfg, is_train=True),
    }
    info = machine_info("cpu")
    with tempfile.TemporaryDirectory(prefix="atss_d2_data_bench_") as root:
        dicts = write_coco_like_images(
            root,
            args.num_images,
            sizes=((width, height), (height, width)),
            num_classes=cfg.MODEL.ATSS.NUM_CLASSES,
            seed=args.seed,
        )
        with tqdm(total=len(workers) * len(mappers) * (1 + args.repeats), unit="pass") as bar:

            def progress(text):
                bar.set_postfix_str(text)
                bar.update()

            rows = benchmark_mappers(dicts, mappers, workers, args.repeats, args.seed, progress)
    result = {
        "command": "python tools/benchmark_data.py " + " ".join(argv or sys.argv[1:]),
        "config_file": args.config_file,
        "num_images": args.num_images,
        "size": [width, height],
        "repeats": args.repeats,
        "seed": args.seed,
        "augmentations": [str(a) for a in mappers["atss_d2"].augmentations.augs],
        "machine": info,
        "rows": rows,
        "ratio_atss_d2_over_detectron2": {str(w): r for w, r in ratios(rows).items()},
        "target_ratio": TARGET,
    }
    print_table(rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
