#!/usr/bin/env python
"""
A small real dataset in Pascal VOC folders: aerial photos of tree crowns with hand-drawn boxes,
as the ``deepforest`` package ships them (MIT licence; NEON airborne imagery), cut into tiles.

    pip download --no-deps deepforest==2.1.0 -d /tmp/deepforest
    python tools/make_tree_dataset.py --wheel /tmp/deepforest/deepforest-2.1.0-py3-none-any.whl \\
        --out datasets/trees

Writes ``OUT/train`` (the 2299x2472 image ``2019_YELL_2_528000_4978000_image_crop2``, 574 trees)
and ``OUT/val`` (the 1249x1035 image ``2019_YELL_2_541000_4977000_image_crop``, 279 trees, a
different stand of the same site), each cut into ``--tile`` px tiles with ``Annotations/*.xml``
and ``JPEGImages/*.png``. Boxes cut by a tile border so that less than half of them remains are
written as ``<difficult>1</difficult>`` (ignore regions). Train on it with
``--voc-dataset custom_train OUT/train/Annotations OUT/train/JPEGImages`` (see the README).
"""

import argparse
import os
import sys
import tempfile
import zipfile
from xml.etree import ElementTree

from PIL import Image
from tqdm import tqdm

from atss_d2.data.tiles import tile_boxes, tile_origins

SPLITS = {
    "train": "2019_YELL_2_528000_4978000_image_crop2",
    "val": "2019_YELL_2_541000_4977000_image_crop",
}


def read_boxes(xml_file: str):
    root = ElementTree.parse(xml_file).getroot()
    boxes = []
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        # VOC's 1-based inclusive pixels -> [x1, y1, x2, y2) in 0-based pixel edges.
        x1, y1, x2, y2 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1, y1 - 1, x2, y2))
    return boxes


def write_xml(path: str, filename: str, size: int, boxes, cut) -> None:
    objects = "".join(
        f"<object><name>Tree</name><difficult>{int(c)}</difficult><bndbox>"
        f"<xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
        "</bndbox></object>"
        for (x1, y1, x2, y2), c in zip(boxes, cut)
    )
    with open(path, "w") as f:
        f.write(
            f"<annotation><filename>{filename}</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>{objects}</annotation>\n"
        )


def make_split(source: str, stem: str, out: str, tile: int) -> int:
    os.makedirs(os.path.join(out, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(out, "JPEGImages"), exist_ok=True)
    boxes = read_boxes(os.path.join(source, stem + ".xml"))
    with Image.open(os.path.join(source, stem + ".png")) as image:
        image = image.convert("RGB")
    width, height = image.size
    origins = [(x, y) for y in tile_origins(height, tile) for x in tile_origins(width, tile)]
    for x0, y0 in tqdm(origins, desc=os.path.basename(out), unit="tile"):
        name = f"{stem}_{x0:04d}_{y0:04d}"
        image.crop((x0, y0, x0 + tile, y0 + tile)).save(
            os.path.join(out, "JPEGImages", name + ".png")
        )
        kept, cut = tile_boxes(boxes, x0, y0, tile)
        write_xml(os.path.join(out, "Annotations", name + ".xml"), name + ".png", tile, kept, cut)
    return len(origins)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", help="the deepforest wheel (pip download --no-deps ...)")
    source.add_argument("--data-dir", help="an unpacked deepforest/data folder")
    parser.add_argument("--out", required=True, help="output folder (train/ and val/ inside)")
    parser.add_argument("--tile", type=int, default=400, help="tile size in pixels")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if args.wheel:
            with zipfile.ZipFile(args.wheel) as wheel:
                members = [m for m in wheel.namelist() if m.startswith("deepforest/data/")]
                wheel.extractall(tmp, members)
            data_dir = os.path.join(tmp, "deepforest", "data")
        for split, stem in SPLITS.items():
            if not os.path.isfile(os.path.join(data_dir, stem + ".xml")):
                sys.exit(f"make_tree_dataset.py: {stem}.xml not found in {data_dir}")
            n = make_split(data_dir, stem, os.path.join(args.out, split), args.tile)
            print(f"{split}: {n} tiles of {args.tile} px in {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
