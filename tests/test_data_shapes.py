"""The synthetic shapes dataset: deterministic, and with the properties it promises."""

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import atss_d2.data  # registration
from atss_d2.data import (
    SHAPES_CLASSES,
    SHAPES_SPLITS,
    ShapesSpec,
    datasets_root,
    generate_shapes,
    load_shapes,
    register_shapes,
)

SMALL = ShapesSpec(num_images=24, seed=5)


def _read(split_dir: Path):
    with open(split_dir / "annotations.json") as f:
        return json.load(f)


def _iou_xywh(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    """The built-in validation split, drawn into a temporary directory."""
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, "val")


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = generate_shapes(tmp_path / "a", "s", SMALL)
    b = generate_shapes(tmp_path / "b", "s", SMALL)
    c = generate_shapes(tmp_path / "c", "s", replace(SMALL, seed=6))
    assert _read(a) == _read(b)
    for image in _read(a)["images"]:
        name = image["file_name"]
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    assert _read(a)["annotations"] != _read(c)["annotations"]


def test_written_once_and_rewritten_when_the_spec_changes(tmp_path):
    split = generate_shapes(tmp_path, "s", SMALL)
    json_file = split / "annotations.json"
    stamp = json_file.stat().st_mtime_ns
    assert generate_shapes(tmp_path, "s", SMALL) == split
    assert json_file.stat().st_mtime_ns == stamp  # reused, not redrawn
    generate_shapes(tmp_path, "s", replace(SMALL, num_images=5))
    assert len(_read(split)["images"]) == 5
    assert not list(tmp_path.glob(".s.*"))  # no temporary directories left behind


def test_val_split_properties(val_split):
    data = _read(val_split)
    spec = SHAPES_SPLITS["val"]
    images = {im["id"]: im for im in data["images"]}
    anns = data["annotations"]
    assert len(images) == spec.num_images

    # Categories: the declared ones, all used, every annotation naming one of them.
    cat_ids = {c["id"] for c in data["categories"]}
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(
        SHAPES_CLASSES
    )
    assert {a["category_id"] for a in anns} == cat_ids
    assert len({a["id"] for a in anns}) == len(anns)

    # Boxes inside their image, with positive size, and image files of the declared size.
    for a in anns:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and a["area"] > 0
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
    first = images[anns[0]["image_id"]]
    with Image.open(val_split / "images" / first["file_name"]) as img:
        assert img.size == (first["width"], first["height"])

    # Empty images, small objects (< 16 px), varied size and aspect.
    per_image = {i: [a for a in anns if a["image_id"] == i] for i in images}
    assert sum(not v for v in per_image.values()) >= 3
    scales = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
    aspects = np.array([a["bbox"][2] / a["bbox"][3] for a in anns])
    assert (scales < 16).sum() >= 5
    assert scales.max() > 40
    assert aspects.min() < 0.6 and aspects.max() > 1.6

    # Overlapping objects exist, and no pair overlaps more than the spec allows.
    ious = [
        _iou_xywh(p["bbox"], q["bbox"])
        for v in per_image.values()
        for p, q in itertools.combinations(v, 2)
    ]
    assert sum(iou > 0 for iou in ious) >= 3
    assert max(ious) <= spec.max_iou + 0.05  # pixel boxes vs. the placement's boxes


def test_object_colours_vary(val_split):
    data = _read(val_split)
    colors = set()
    for a in data["annotations"][:40]:
        if a["category_id"] != 2:  # rectangles: every pixel of the box is the object's
            continue
        im = next(i for i in data["images"] if i["id"] == a["image_id"])
        pixels = np.asarray(Image.open(val_split / "images" / im["file_name"]).convert("RGB"))
        x, y, w, h = a["bbox"]
        colors.add(tuple(pixels[y + h // 2, x + w // 2]))
    assert len(colors) >= 5


def test_builtin_registration_is_lazy(tmp_path):
    assert {"shapes_train", "shapes_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("shapes_val").thing_classes == list(SHAPES_CLASSES)
    assert len(MetadataCatalog.get("shapes_val").thing_colors) == len(SHAPES_CLASSES)

    spec = ShapesSpec(num_images=3, height=48, width=64, seed=1)
    register_shapes("shapes_test_lazy", "lazy", root=tmp_path, spec=spec)
    assert not (tmp_path / "shapes").exists()  # registering draws nothing
    dicts = DatasetCatalog.get("shapes_test_lazy")
    assert len(dicts) == 3 and (tmp_path / "shapes" / "lazy" / "annotations.json").is_file()
    assert dicts[0]["height"] == 48 and dicts[0]["width"] == 64
    meta = MetadataCatalog.get("shapes_test_lazy")
    assert meta.json_file == str(tmp_path / "shapes" / "lazy" / "annotations.json")


# First-run generation of the built-in dataset, at a tiny size.
TINY = ShapesSpec(num_images=3, height=32, width=40, min_size=8, max_size=20, seed=2)
REPO = Path(__file__).resolve().parents[1]


def _fake_package(monkeypatch, checkout: Path, editable: bool) -> None:
    """Make atss_d2.data believe it lives in ``checkout/atss_d2/data`` (a source checkout when
    ``editable``: ``checkout/setup.py`` exists; an installed copy otherwise)."""
    checkout.mkdir(parents=True)
    if editable:
        (checkout / "setup.py").write_text("")
    monkeypatch.setattr(atss_d2.data, "__file__", str(checkout / "atss_d2" / "data" / "x.py"))


def test_datasets_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("ATSS_D2_DATASETS", raising=False)
    # This checkout (editable install: setup.py next to the package): REPO/datasets. Only the
    # path is checked; nothing is written there.
    assert datasets_root() == REPO / "datasets"
    monkeypatch.setenv("ATSS_D2_DATASETS", "")  # empty: as if unset
    assert datasets_root() == REPO / "datasets"
    monkeypatch.setenv("ATSS_D2_DATASETS", str(tmp_path / "env"))
    assert datasets_root() == tmp_path / "env"
    assert datasets_root(tmp_path / "given") == tmp_path / "given"  # an argument beats both

    monkeypatch.delenv("ATSS_D2_DATASETS")
    _fake_package(monkeypatch, tmp_path / "checkout", editable=True)
    assert datasets_root() == tmp_path / "checkout" / "datasets"
    _fake_package(monkeypatch, tmp_path / "site-packages", editable=False)
    assert datasets_root() == Path("datasets")  # relative: the working directory's


def _assert_tiny_split(dicts, split_dir: Path):
    assert len(dicts) == TINY.num_images
    assert [d["file_name"] for d in dicts] == [
        str(split_dir / "images" / f"{i:06d}.png") for i in range(TINY.num_images)
    ]
    assert all(Path(d["file_name"]).is_file() for d in dicts)
    assert {(d["height"], d["width"]) for d in dicts} == {(32, 40)}
    assert _read(split_dir)["info"]["spec"]["num_images"] == TINY.num_images


def test_builtin_split_is_drawn_under_the_environment_root_on_first_load(monkeypatch, tmp_path):
    monkeypatch.setenv("ATSS_D2_DATASETS", str(tmp_path))
    monkeypatch.setitem(SHAPES_SPLITS, "val", TINY)  # the registered shapes_val, tiny
    meta = MetadataCatalog.get("shapes_val")
    # What an earlier load in this process may have set (loading sets it, and refuses to change
    # it): put aside for this test, restored after it.
    saved = {k: meta.get(k) for k in ("json_file", "image_root") if hasattr(meta, k)}
    for key in saved:
        delattr(meta, key)
    split_dir = tmp_path / "shapes" / "val"
    assert not split_dir.exists()
    try:
        dicts = DatasetCatalog.get("shapes_val")
        _assert_tiny_split(dicts, split_dir)
        assert meta.json_file == str(split_dir / "annotations.json")
        assert meta.image_root == str(split_dir / "images")
        stamp = (split_dir / "annotations.json").stat().st_mtime_ns
        assert len(DatasetCatalog.get("shapes_val")) == TINY.num_images
        assert (split_dir / "annotations.json").stat().st_mtime_ns == stamp  # reused
    finally:
        for key in ("json_file", "image_root"):
            if hasattr(meta, key):
                delattr(meta, key)
        meta.set(**saved)


def test_first_load_draws_under_the_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ATSS_D2_DATASETS", raising=False)
    # A source checkout in tmp_path stands in for this one: datasets/ next to setup.py.
    _fake_package(monkeypatch, tmp_path / "checkout", editable=True)
    dicts = load_shapes("first", spec=TINY)
    _assert_tiny_split(dicts, tmp_path / "checkout" / "datasets" / "shapes" / "first")

    # An installed copy: ./datasets in the working directory.
    _fake_package(monkeypatch, tmp_path / "site-packages", editable=False)
    monkeypatch.chdir(tmp_path)
    dicts = load_shapes("second", spec=TINY)
    _assert_tiny_split(dicts, Path("datasets") / "shapes" / "second")
    assert (tmp_path / "datasets" / "shapes" / "second" / "annotations.json").is_file()
