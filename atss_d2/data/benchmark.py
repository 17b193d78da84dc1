"""
Throughput of the training data pipeline: images per second through a dataset mapper, measured
the way training reads data, so that :class:`~atss_d2.data.mapper.ATSSDatasetMapper` can be
compared with detectron2's ``DatasetMapper`` (``tools/benchmark_data.py``).

The loader is a plain ``torch.utils.data.DataLoader`` over detectron2's
``MapDataset(DatasetFromList(dicts, copy=False, serialize=True), mapper)`` with batch size 1,
detectron2's ``trivial_batch_collator`` and the sequential sampler: what
``build_detection_train_loader`` runs per image (read, augment, annotations to ``Instances``,
collate), without its infinite sampler and aspect-ratio grouping, which cost the same for any
mapper and would make passes of a fixed length awkward. With workers, the loader keeps them
(``persistent_workers``): the first (warm-up) pass starts them, the timed passes do not pay for
the start, as a training run that reads data without end does not.

Every pass of every mapper sees the same images in the same order and draws the same random
augmentations: the RNGs are reseeded (detectron2's ``seed_all_rng``) before each pass in the
main process, and with ``seed + worker_id`` when a worker starts (both mappers draw the same
number of random numbers per image, so the flips match pass for pass).
"""

import functools
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

__all__ = ["benchmark_mappers", "make_loader", "time_passes", "write_coco_like_images"]


def write_coco_like_images(
    root: os.PathLike,
    num_images: int = 48,
    sizes: Sequence[Sequence[int]] = ((640, 480), (480, 640)),
    boxes_per_image: Sequence[int] = (5, 15),
    num_classes: int = 80,
    quality: int = 90,
    seed: int = 0,
) -> List[Dict]:
    """
    Write ``num_images`` JPEGs to ``root`` and return their detectron2 dataset dicts.

    Image i has size ``sizes[i % len(sizes)]`` (width, height): a colour gradient with filled
    rectangles at the annotated boxes and mild noise, so that JPEG decoding costs about what it
    costs for a photograph (pure noise decodes slower, flat colour faster). Each image has
    between ``boxes_per_image[0]`` and ``boxes_per_image[1]`` boxes (XYWH_ABS, with "area",
    iscrowd 0, category ids in [0, num_classes)), side log-uniform in [12, 400] px, aspect
    ratio log-uniform in [1/3, 3], clipped to the image.
    """
    rng = np.random.default_rng(seed)
    dicts = []
    for i in range(num_images):
        w, h = sizes[i % len(sizes)]
        n = int(rng.integers(boxes_per_image[0], boxes_per_image[1] + 1))
        side = np.exp(rng.uniform(math.log(12), math.log(400), n))
        ratio = np.exp(rng.uniform(-math.log(3), math.log(3), n))
        bw, bh = side * np.sqrt(ratio), side / np.sqrt(ratio)
        cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
        x0, y0 = np.clip(cx - bw / 2, 0, w - 2), np.clip(cy - bh / 2, 0, h - 2)
        x1, y1 = np.clip(cx + bw / 2, x0 + 2, w), np.clip(cy + bh / 2, y0 + 2, h)

        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3).astype(np.float32)
        pixels = (base + 0.2 * xx[..., None] + 0.15 * yy[..., None]) % 256  # (H, W, 3)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for box in zip(x0, y0, x1, y1):
            draw.rectangle(
                [float(v) for v in box], fill=tuple(int(c) for c in rng.integers(256, size=3))
            )
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
        file_name = os.path.join(os.fspath(root), f"{i:06d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(file_name, quality=quality)

        classes = rng.integers(0, num_classes, n)
        annotations = [
            {
                "bbox": [float(a), float(b), float(c - a), float(d - b)],
                "bbox_mode": BoxMode.XYWH_ABS,
                "area": float((c - a) * (d - b)),
                "category_id": int(k),
                "iscrowd": 0,
            }
            for a, b, c, d, k in zip(x0, y0, x1, y1, classes)
        ]
        dicts.append(
            {
                "file_name": file_name,
                "image_id": i,
                "height": h,
                "width": w,
                "annotations": annotations,
            }
        )
    return dicts


def _seed_worker(worker_id: int, seed: int) -> None:
    seed_all_rng(seed + worker_id)


def make_loader(
    dataset_dicts: List[Dict], mapper: Callable[[Dict], Dict], num_workers: int, seed: int = 0
) -> DataLoader:
    """The loader described in the module docstring: batch size 1, sequential order."""
    dataset = MapDataset(DatasetFromList(dataset_dicts, copy=False, serialize=True), mapper)
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=functools.partial(_seed_worker, seed=seed) if num_workers else None,
        persistent_workers=num_workers > 0,
    )


def time_passes(loader: DataLoader, passes: int, seed: int = 0) -> List[float]:
    """Run ``passes`` full passes over ``loader``; returns each pass's images per second."""
    rates = []
    for _ in range(passes):
        seed_all_rng(seed)
        start = time.perf_counter()
        count = sum(len(batch) for batch in loader)
        rates.append(count / (time.perf_counter() - start))
    return rates


def benchmark_mappers(
    dataset_dicts: List[Dict],
    mappers: Dict[str, Callable[[Dict], Dict]],
    workers: Sequence[int] = (0, 2),
    repeats: int = 3,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> List[Dict]:
    """
    Images per second of each mapper with each number of loader workers.

    For each worker count, every mapper gets one warm-up pass (which also starts its workers),
    then the ``repeats`` timed passes are interleaved across the mappers (one pass of each in
    turn), so that a load change on the machine hits all of them alike.

    Args:
        mappers: name -> mapper; all see the same images, order and augmentations.
        progress: called with a short description after every pass (e.g. a tqdm update).

    Returns:
        one row per (workers, mapper): {"workers", "mapper", "images", "rates" (images/s of
        each timed pass), "median_images_per_s"}.
    """
    rows = []
    for num_workers in workers:
        loaders = {
            name: make_loader(dataset_dicts, m, num_workers, seed) for name, m in mappers.items()
        }
        rates: Dict[str, List[float]] = {name: [] for name in mappers}
        try:
            for name, loader in loaders.items():
                time_passes(loader, 1, seed)  # warm-up: file cache, imports, worker start
                if progress:
                    progress(f"{name} workers={num_workers} warm-up")
            for _ in range(repeats):
                for name, loader in loaders.items():
                    rates[name] += time_passes(loader, 1, seed)
                    if progress:
                        progress(f"{name} workers={num_workers} {rates[name][-1]:.1f} img/s")
        finally:
            for loader in loaders.values():
                iterator = getattr(loader, "_iterator", None)
                if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                    iterator._shutdown_workers()  # persistent workers: stop them now
        for name in mappers:
            rows.append(
                {
                    "workers": num_workers,
                    "mapper": name,
                    "images": len(dataset_dicts),
                    "rates": rates[name],
                    "median_images_per_s": statistics.median(rates[name]),
                }
            )
    return rows
