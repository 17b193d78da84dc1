"""demo/demo.py writes one annotated image per input, of the input's size; bad inputs are named."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.yaml"


def _demo():
    spec = importlib.util.spec_from_file_location("atss_demo", REPO / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(path, height, width, seed):
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 30, np.uint8)
    pixels[10:40, 20:60] = rng.integers(100, 256, size=3)
    Image.fromarray(pixels).save(path)
    return path


def test_writes_one_image_per_input_of_the_same_size(tmp_path):
    inputs = [_image(tmp_path / "a.png", 128, 160, 0), _image(tmp_path / "b.jpg", 96, 120, 1)]
    out_dir = tmp_path / "out"
    # An untrained model (MODEL.WEIGHTS "") is enough to check the plumbing.
    outs = _demo().main([
        "--config-file", str(CONFIG),
        "--input", *map(str, inputs),
        "--output", str(out_dir),
        "--confidence-threshold", "0.3",
        "--opts", "MODEL.WEIGHTS", "",
    ])  # fmt: skip
    assert sorted(Path(p).name for p in outs) == ["a.png", "b.jpg"]
    for src, out in zip(inputs, outs):
        with Image.open(src) as a, Image.open(out) as b:
            b.load()  # a valid, decodable image
            assert b.size == a.size and b.mode == "RGB"


def test_unreadable_input_is_named(tmp_path):
    demo = _demo()
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    args = ["--config-file", str(CONFIG), "--output", str(tmp_path / "out"), "--input"]
    with pytest.raises(demo.UnreadableImageError, match="not_an_image.png"):
        demo.main(args + [str(_image(tmp_path / "ok.png", 64, 64, 0)), str(bad)])
    with pytest.raises(demo.UnreadableImageError, match="missing.png"):
        demo.main(args + [str(tmp_path / "missing.png")])
    assert not (tmp_path / "out").exists()  # failed before writing anything
