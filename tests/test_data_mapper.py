"""
ATSSDatasetMapper and the trainer's data loader on bad data: crowd-only images, degenerate and
out-of-image boxes, thousands of boxes, grayscale / 16-bit / RGBA / palette images, tiny and
huge images, undeclared categories, missing and corrupt files.
"""

import collections
import contextlib
import copy
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from PIL import Image
from tiny_setup import draw_image, one_torch_thread, registered, tiny_cfg, write_png

from atss_d2.data.mapper import (
    ATSSDatasetMapper,
    DatasetAnnotationError,
    SkippingMapDataset,
    UnreadableImageError,
)
from atss_d2.engine import ATSSTrainer

XYXY, XYWH = BoxMode.XYXY_ABS, BoxMode.XYWH_ABS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def anno(bbox, category=0, mode=XYXY, **extra):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category, "iscrowd": 0, **extra}


def record(file_name, h, w, annotations, image_id=0):
    return {
        "file_name": str(file_name),
        "image_id": image_id,
        "height": h,
        "width": w,
        "annotations": annotations,
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image files of every kind, keyed by a short name."""
    root = tmp_path_factory.mktemp("mapper_images")
    rgb = draw_image(64, 80, [[10, 10, 40, 40]])
    gray = rgb[..., 0]
    out = {
        "rgb": write_png(root / "rgb.png", rgb),
        "gray": write_png(root / "gray.png", gray, "L"),
        "rgba": write_png(root / "rgba.png", np.dstack([rgb, np.full((64, 80), 7, np.uint8)])),
        "tiny": write_png(root / "tiny.png", draw_image(16, 20, [[2, 2, 12, 10]])),
        "huge": write_png(root / "huge.png", np.zeros((3200, 3008, 3), np.uint8) + np.uint8(90)),
        "crowded": write_png(root / "crowded.png", draw_image(128, 128, [])),
    }
    gray16 = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 12) | np.uint16(0x8000)
    gray16[0, 0] = 65535
    Image.fromarray(gray16).save(root / "gray16.png")  # mode I;16
    out["gray16"] = str(root / "gray16.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(root / "palette.png")
    out["palette"] = str(root / "palette.png")
    (root / "garbage.png").write_bytes(b"this is not an image" * 10)
    out["garbage"] = str(root / "garbage.png")
    full = (root / "rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    out["truncated"] = str(root / "truncated.png")
    out["missing"] = str(root / "does_not_exist.jpg")
    return out


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_cfg(tmp_path_factory.mktemp("mapper_out"))


def test_image_modes_come_out_in_the_model_format(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    rgb = mapper(record(files["rgb"], 64, 80, []))["image"]
    assert rgb.shape == (3, 64, 80) and rgb.dtype == torch.uint8  # resized to short side 64

    gray = mapper(record(files["gray"], 64, 80, []))["image"]
    assert gray.shape == (3, 64, 80)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(gray[0], rgb[0])  # the gray file is the red channel of the rgb one

    rgba = mapper(record(files["rgba"], 64, 80, []))["image"]
    assert torch.equal(rgba, rgb)  # alpha dropped, colours kept

    palette = mapper(record(files["palette"], 64, 80, []))["image"]
    assert palette.shape == (3, 64, 80)

    gray16 = mapper(record(files["gray16"], 64, 80, []))["image"]
    assert gray16.shape == (3, 64, 80)
    assert gray16[0, 0, 0] == 255  # 65535 -> 255, not clipped garbage
    assert gray16.min() >= 0x8000 // 257  # every pixel >= 32768 -> >= 127

    cfg_bgr = cfg.clone()
    cfg_bgr.INPUT.FORMAT = "BGR"
    bgr = ATSSDatasetMapper(cfg_bgr, is_train=True)(record(files["rgb"], 64, 80, []))["image"]
    assert torch.equal(bgr, rgb.flip(0))


def test_tiny_and_huge_images_are_resized(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    tiny = mapper(record(files["tiny"], 16, 20, [anno([2, 2, 12, 10])]))
    assert tiny["image"].shape == (3, 64, 80)
    assert tiny["instances"].gt_boxes.tensor.tolist() == [[8.0, 8.0, 48.0, 40.0]]

    huge = mapper(record(files["huge"], 3200, 3008, [anno([100, 200, 1600, 3200])]))
    h, w = huge["image"].shape[1:]
    assert (h, w) == (68, 64)  # short side 64 (3200 * 64 / 3008 = 68.09)
    box = huge["instances"].gt_boxes.tensor[0]
    sx, sy = 64 / 3008, 68 / 3200  # per-axis scales of the resize
    assert torch.allclose(box, torch.tensor([100 * sx, 200 * sy, 1600 * sx, 3200 * sy]))


def test_crowd_only_and_unannotated_images_give_empty_instances(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    crowd = [anno([10, 10, 40, 40], iscrowd=1), anno([0, 0, 20, 20], 1, iscrowd=1)]
    out = mapper(record(files["rgb"], 64, 80, crowd))
    assert len(out["instances"]) == 0 and out["instances"].gt_boxes.tensor.shape == (0, 4)
    no_key = record(files["rgb"], 64, 80, [])
    del no_key["annotations"]
    assert len(mapper(no_key)["instances"]) == 0


def test_boxes_under_one_pixel_are_dropped_before_resizing(cfg, files, caplog):
    """INPUT.MIN_BOX_SIZE 1 (Base-ATSS.yaml): mmdetection's CocoDataset.parse_data_info drops
    annotations with w < 1 or h < 1 or area <= 0, in the annotation's own pixels, before the
    pipeline's Resize. The 16 x 20 image is resized x4, so a 0.8 px box would be 3.2 px after."""
    assert cfg.INPUT.MIN_BOX_SIZE == 1.0
    annotations = [
        anno([2, 2, 2.8, 10]),  # w 0.8: dropped
        anno([2, 2, 1.0, 5], mode=XYWH),  # w 1 exactly: kept -> [8, 8, 12, 28]
        anno([4, 4, 9, 4.5]),  # h 0.5: dropped
        anno([5, 5, 10, 10], area=0),  # area 0 (COCO's segment area): dropped
        anno([5, 5, 10, 10], 1, area=12.5),  # kept -> [20, 20, 40, 40]
        anno([10, 2, 15, 3], 1),  # h 1: kept -> [40, 8, 60, 12]
    ]
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    with caplog.at_level(logging.WARNING, logger="atss_d2.data.mapper"):
        out = mapper(record(files["tiny"], 16, 20, annotations))
    assert out["image"].shape == (3, 64, 80)
    inst = out["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[8, 8, 12, 28], [20, 20, 40, 40], [40, 8, 60, 12]]
    assert inst.gt_classes.tolist() == [0, 1, 1]
    assert dict(mapper.bad_boxes.counts) == {
        "width or height < 1 px (INPUT.MIN_BOX_SIZE)": 2,
        "an 'area' <= 0": 1,
    }
    assert "INPUT.MIN_BOX_SIZE" in caplog.text and "tiny.png" in caplog.text

    # The authors' configs (INPUT.MIN_BOX_SIZE 0) keep every box of positive size.
    off = cfg.clone()
    off.INPUT.MIN_BOX_SIZE = 0.0
    kept = ATSSDatasetMapper(off, is_train=True)(record(files["tiny"], 16, 20, annotations))
    assert len(kept["instances"]) == 6
    off.INPUT.MIN_BOX_SIZE = -1.0
    with pytest.raises(ValueError, match="INPUT.MIN_BOX_SIZE"):
        ATSSDatasetMapper(off, is_train=True)


def test_degenerate_boxes_are_dropped_and_counted(cfg, files, caplog):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    annotations = [
        anno([10, 10, 40, 40]),  # good
        anno([10, 10, 10, 30]),  # zero width
        anno([10, 10, -5, 8], mode=XYWH),  # negative width
        anno([50, 20, 30, 40]),  # x2 < x1
        anno([100, 10, 120, 30]),  # right of the 80 px wide image
        anno([-30, -30, -1, -1]),  # above-left of it
        anno([float("nan"), 1, 5, 5]),
        anno([1, 1, float("inf"), 5]),
        anno([70, 50, 95, 90], 1),  # partly outside: clipped to (70, 50, 80, 64)
    ]
    dataset_dict = record(files["rgb"], 64, 80, annotations)
    # Input untouched: compared with a deep copy (the NaN bbox value is the same float object in
    # both, so list equality holds for it exactly as long as nothing is replaced or changed).
    original = copy.deepcopy(dataset_dict)
    with caplog.at_level(logging.WARNING, logger="atss_d2.data.mapper"):
        out = mapper(dataset_dict)
    assert dataset_dict == original
    inst = out["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[10, 10, 40, 40], [70, 50, 80, 64]]
    assert inst.gt_classes.tolist() == [0, 1]
    counts = dict(mapper.bad_boxes.counts)
    assert counts == {
        "zero or negative width/height": 3,
        "no overlap with the 80x64 image": 2,
        "non-finite coordinates": 2,
    }
    assert "rgb.png" in caplog.text and "annotation #" in caplog.text

    # Thousands of bad boxes: a handful of log lines (at counts 1, 10, 100, 1000), not 5000.
    caplog.clear()
    bad = [anno([5, 5, 5, 9])] * 5000
    with caplog.at_level(logging.WARNING, logger="atss_d2.data.mapper"):
        for _ in range(2):
            mapper(record(files["rgb"], 64, 80, bad))
    assert mapper.bad_boxes.counts["zero or negative width/height"] == 3 + 10000
    # 3 -> 5003 passes 10, 100 and 1000 at once: one line; 5003 -> 10003 passes 10000.
    assert [r.getMessage().split(" so far")[0][-5:] for r in caplog.records] == [" 5003", "10003"]


def test_malformed_annotations_raise_naming_file_and_annotation(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    cases = [
        (anno([1, 1, 9, 9], category=2, id=77), r"annotation #1 \(id 77\).*category_id 2"),
        (anno([1, 1, 9, 9], category=-1), "annotation #1.*category_id -1"),
        (anno([1, 1, 9]), "annotation #1.*not four numbers"),
        (anno(["1", 1, 9, 9]), "annotation #1.*not four numbers"),
        (anno([1, 1, 9, 9], mode=BoxMode.XYWHA_ABS), "annotation #1.*bbox_mode"),
        ({"bbox": [1, 1, 9, 9], "category_id": 0}, r"annotation #1 of .* lacks \['bbox_mode'\]"),
    ]
    for bad, pattern in cases:
        with pytest.raises(DatasetAnnotationError, match=pattern) as info:
            mapper(record(files["rgb"], 64, 80, [anno([1, 1, 9, 9]), bad]))
        assert files["rgb"] in str(info.value)


def test_unreadable_images_raise_or_are_skipped(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    for key in ("missing", "garbage", "truncated"):
        with pytest.raises(UnreadableImageError, match="does_not_exist|garbage|truncated") as e:
            mapper(record(files[key], 64, 80, []))
        assert files[key] in str(e.value)

    skip_cfg = cfg.clone()
    skip_cfg.DATALOADER.SKIP_UNREADABLE_IMAGES = True
    skipping = ATSSDatasetMapper(skip_cfg, is_train=True)
    assert skipping(record(files["missing"], 64, 80, [])) is None
    assert skipping(record(files["garbage"], 64, 80, [])) is None
    assert skipping.skipped_images.counts["an unreadable file"] == 2
    # Evaluation needs every image: no skipping there.
    with pytest.raises(UnreadableImageError):
        ATSSDatasetMapper(skip_cfg, is_train=False)(record(files["missing"], 64, 80, []))

    dataset = SkippingMapDataset(
        [record(files[k], 64, 80, [], i) for i, k in enumerate(["rgb", "missing", "gray"])],
        skipping,
    )
    assert [dataset[i]["image_id"] for i in range(3)] == [0, 2, 2]
    all_bad = SkippingMapDataset([record(files["missing"], 64, 80, [])] * 3, skipping)
    with pytest.raises(UnreadableImageError, match="None of the 3 images"):
        all_bad[1]


def _weird_dataset(files):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(3000, 2))
    wh = rng.uniform(2, 28, size=(3000, 2))
    crowded = [anno(list(map(float, b)), i % 2, XYWH) for i, b in enumerate(np.hstack([xy, wh]))]
    crowded.append(anno([200, 10, 220, 30]))  # outside the 128 x 128 image
    return [
        record(files["rgb"], 64, 80, [anno([10, 10, 40, 40]), anno([5, 5, 5, 20])], 0),
        record(files["gray"], 64, 80, [anno([10, 10, 40, 40], 1), anno([90, 9, 99, 19])], 1),
        record(files["rgba"], 64, 80, [anno([10, 10, 40, 40], iscrowd=1)], 2),
        record(files["tiny"], 16, 20, [anno([2, 2, 12, 10], 1)], 3),
        record(files["huge"], 3200, 3008, [anno([100, 200, 1600, 3200])], 4),
        record(files["crowded"], 128, 128, crowded, 5),
        record(files["gray16"], 64, 80, [anno([1, 1, float("nan"), 5])], 6),
        record(files["missing"], 64, 80, [anno([10, 10, 40, 40])], 7),
    ]


def test_every_kind_of_image_trains_with_finite_losses(cfg, files):
    mapper = ATSSDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in _weird_dataset(files)[:-1]]
    assert [len(x["instances"]) for x in batch] == [1, 1, 0, 1, 1, 3000, 0]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    # One batch (the images are all about 64 x 80 after resizing): a NaN from any image would
    # make the batch's losses NaN.
    with EventStorage():
        losses = model(batch)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_trainer_loader_uses_the_robust_mapper(cfg, files, tmp_path):
    dataset = [_weird_dataset(files)[i] for i in (2, 4, 5, 7)]  # crowd, huge, 3000 boxes, missing
    opts = ["DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
            "DATALOADER.ASPECT_RATIO_GROUPING", "False",
            "SOLVER.MAX_ITER", "2"]  # fmt: skip
    with registered("mapper_weird_train", dataset) as name:
        # 4 images, batch 2, 2 iterations: the first shuffled pass sees every image once.
        strict = tiny_cfg(tmp_path / "strict", "DATASETS.TRAIN", f"('{name}',)", *opts)
        with pytest.raises(UnreadableImageError, match="does_not_exist.jpg"):
            ATSSTrainer(strict).train()

        skip = tiny_cfg(
            tmp_path / "skip", "DATASETS.TRAIN", f"('{name}',)",
            "DATALOADER.SKIP_UNREADABLE_IMAGES", "True", *opts,
        )  # fmt: skip
        trainer = ATSSTrainer(skip)
        trainer.train()
        history = trainer.storage.history("total_loss").values()
        assert len(history) == 2 and all(math.isfinite(v) for v, _ in history)
    assert "mapper_weird_train" not in MetadataCatalog.list()


def test_unreadable_images_are_skipped_inside_loader_workers(files, tmp_path):
    """NUM_WORKERS 2: the trainer's SkippingMapDataset and skipping mapper run in worker
    processes (each with its own copy), and the unreadable images never come out."""
    keys = ["rgb", "missing", "gray", "garbage", "rgba", "palette"]
    dataset = [record(files[k], 64, 80, [anno([10, 10, 40, 40])], i) for i, k in enumerate(keys)]
    with registered("mapper_workers_train", dataset) as name:
        cfg = tiny_cfg(
            tmp_path, "DATASETS.TRAIN", f"('{name}',)",
            "DATALOADER.NUM_WORKERS", "2", "DATALOADER.SKIP_UNREADABLE_IMAGES", "True",
        )  # fmt: skip
        seed_all_rng(0)
        loader = ATSSTrainer.build_train_loader(cfg)
        assert loader.dataset.num_workers == 2  # the torch DataLoader under the batching
        # 6 batches of 2: the first 12 indices of the sampler (the workers take turns, in
        # order), i.e. two shuffled passes over the 6 images.
        with contextlib.closing(iter(loader)) as batches:
            seen = [d for batch in itertools.islice(batches, 6) for d in batch]
    assert all(d["image"].shape == (3, 64, 80) for d in seen)
    # Per pass, each readable image once for its own index, and an unreadable one replaced by
    # the next image in dataset order: "missing" by "gray", "garbage" by "rgba".
    counts = collections.Counter(d["file_name"] for d in seen)
    assert counts == {files["rgb"]: 2, files["gray"]: 4, files["rgba"]: 4, files["palette"]: 2}
