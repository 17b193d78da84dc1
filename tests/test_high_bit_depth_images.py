"""
Grayscale images of more than 8 bits (16-bit PNG and TIFF, 32-bit TIFF, float TIFF), read by the
reader of training and evaluation (atss_d2.data.mapper.read_image_any_mode), by the demo
(atss_d2.demo.load_image, run_on_image_files) and by tools/export_model.py's --sample-image.

A 16-bit value v becomes round(v / 257), from the file's bit depth, whatever the image's own
range: 0 -> 0, 128 -> 0 (0.498), 129 -> 1 (0.502), 250 -> 1 (0.973), 257 -> 1, 385 -> 1
(1.498), 386 -> 2 (1.502), 32896 -> 128 (128.0), 65535 -> 255. A frame whose values stay below
256 is therefore as dark as its 16-bit values say, not read as 8-bit content.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import Metadata
from detectron2.structures import Boxes, Instances
from PIL import Image
from tiny_setup import BASE_CONFIG, load_script

from atss_d2.data.mapper import read_image_any_mode
from atss_d2.demo import VisualizationDemo, load_image, run_on_image_files

# 16-bit values and their 8-bit values, by hand (see the module docstring).
DARK = {0: 0, 128: 0, 129: 1, 200: 1, 250: 1}  # a frame whose maximum is 250
BRIGHT = {0: 0, 129: 1, 257: 1, 385: 1, 386: 2, 32896: 128, 65535: 255}


def _frame(values, height=8) -> np.ndarray:
    """(height, len(values)) uint16: column j holds values[j]."""
    return np.tile(np.asarray(list(values), dtype=np.uint16), (height, 1))


def _expected(table, height=8) -> np.ndarray:
    return np.tile(np.asarray(list(table.values()), dtype=np.uint8), (height, 1))


def _save(path: Path, array: np.ndarray, mode=None, **kwargs) -> str:
    Image.fromarray(array, mode=mode).save(path, **kwargs)
    return str(path)


def _files(tmp_path, table):
    """The same 16-bit frame as PNG (Pillow opens it as mode "I"), little- and big-endian TIFF
    (modes "I;16", "I;16B") and compressed TIFF."""
    a = _frame(table)
    return {
        "png": _save(tmp_path / "frame.png", a),
        "tiff I;16": _save(tmp_path / "frame.tif", a, mode="I;16"),
        "tiff I;16B": _save(tmp_path / "frame_b.tif", a.astype(">u2"), mode="I;16B"),
        "tiff deflate": _save(tmp_path / "frame_z.tif", a, mode="I;16", compression="tiff_deflate"),
    }


@pytest.mark.parametrize("table", [DARK, BRIGHT], ids=["max 250", "max 65535"])
def test_16_bit_value_v_reads_as_round_v_over_257(tmp_path, table):
    expected = _expected(table)
    for kind, path in _files(tmp_path, table).items():
        assert read_image_any_mode(path, "L")[:, :, 0].tolist() == expected.tolist(), kind
        demo = load_image(path)  # BGR
        assert demo.shape == expected.shape + (3,) and demo.dtype == np.uint8, kind
        for channel in range(3):
            assert demo[:, :, channel].tolist() == expected.tolist(), kind


def test_two_frames_of_one_camera_keep_one_scale(tmp_path):
    # 0..250 and 0..260: the same scale (1/257), not 8-bit content for one and 1/257 for the
    # other. 250 -> 1 (0.973) and 260 -> 1 (1.012).
    dark = _save(tmp_path / "dark.png", _frame([0, 250]))
    brighter = _save(tmp_path / "brighter.png", _frame([0, 260]))
    assert read_image_any_mode(dark, "L")[0, :, 0].tolist() == [0, 1]
    assert read_image_any_mode(brighter, "L")[0, :, 0].tolist() == [0, 1]


def test_8_bit_content_is_kept(tmp_path):
    # An 8-bit PNG, and a 32-bit integer TIFF (mode "I", not 16-bit) whose values are <= 255.
    values = [0, 1, 128, 250, 255]
    a = np.tile(np.asarray(values, dtype=np.uint8), (4, 1))
    png = _save(tmp_path / "eight.png", a)
    tif = _save(tmp_path / "thirty_two.tif", a.astype(np.int32), mode="I")
    assert Image.open(tif).mode == "I"
    for path in (png, tif):
        assert read_image_any_mode(path, "L")[:, :, 0].tolist() == a.tolist()
        assert load_image(path)[:, :, 1].tolist() == a.tolist()


def test_float_image_in_0_1(tmp_path):
    # 0.2 * 255 = 51, 0.6 * 255 = 153, 1 -> 255
    a = np.tile(np.asarray([0.0, 0.2, 0.6, 1.0], dtype=np.float32), (4, 1))
    path = _save(tmp_path / "float.tif", a, mode="F")
    expected = [[0, 51, 153, 255]] * 4
    assert read_image_any_mode(path, "L")[:, :, 0].tolist() == expected
    assert load_image(path)[:, :, 2].tolist() == expected


class _Recorder:
    """A predictor that records the images it is given and detects nothing."""

    def __init__(self):
        self.images = []

    def __call__(self, image):
        self.images.append(image.copy())
        instances = Instances(image.shape[:2])
        instances.pred_boxes = Boxes(torch.zeros(0, 4))
        instances.scores = torch.zeros(0)
        instances.pred_classes = torch.zeros(0, dtype=torch.int64)
        return {"instances": instances}


def test_the_demo_runs_the_model_on_the_scaled_image(tmp_path):
    path = _files(tmp_path, BRIGHT)["png"]
    recorder = _Recorder()
    demo = VisualizationDemo(recorder, Metadata(name="m", thing_classes=["a"]))
    results = list(run_on_image_files(demo, [path], [str(tmp_path / "out.png")]))
    assert [r.error for r in results] == [None]
    (image,) = recorder.images
    assert image[:, :, 0].tolist() == _expected(BRIGHT).tolist()
    # The drawn image (no detections) is the scaled image.
    drawn = np.asarray(Image.open(tmp_path / "out.png").convert("L"))
    assert drawn.tolist() == _expected(BRIGHT).tolist()


def test_export_sample_image_reads_16_bit(tmp_path):
    export = load_script("tools/export_model.py")
    path = _files(tmp_path, BRIGHT)["png"]  # 8 x 7: a short side of 7 px, kept at 7
    args = export.get_parser().parse_args(
        ["--config-file", str(BASE_CONFIG), "--output", str(tmp_path / "exported"),
         "INPUT.MIN_SIZE_TEST", "7", "INPUT.MAX_SIZE_TEST", "100", "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    image = export.sample_image(export.setup_cfg(args), path)  # float32 (3, H, W)
    assert tuple(image.shape) == (3, 8, len(BRIGHT))
    for channel in range(3):
        assert image[channel].int().tolist() == _expected(BRIGHT).tolist()


def test_unreadable_sample_image_is_one_line(tmp_path):
    export = load_script("tools/export_model.py")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    args = export.get_parser().parse_args(
        ["--config-file", str(BASE_CONFIG), "--output", str(tmp_path / "exported")]
    )
    with pytest.raises(ValueError, match=r"^--sample-image: Cannot read image file .*bad\.png"):
        export.sample_image(export.setup_cfg(args), str(bad))


def test_formats_without_tiles_still_read(tmp_path):
    # Pillow leaves ICO's (and ICNS's) tile list None: read as any RGB image.
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :8] = (200, 100, 50)
    path = _save(tmp_path / "icon.ico", pixels, sizes=[(16, 16)])
    rgb = read_image_any_mode(path, "RGB")
    assert rgb.shape == (16, 16, 3)
    assert rgb[0, 0].tolist() == [200, 100, 50] and rgb[0, 15].tolist() == [0, 0, 0]


def test_8_bit_values_in_a_16_bit_file_are_warned_once(tmp_path, caplog):
    import logging

    from atss_d2.data import mapper

    mapper._warn_8bit_values_in_16bit.cache_clear()
    path = _save(tmp_path / "cv2_style.png", _frame([0, 128, 255]))
    with caplog.at_level(logging.WARNING, logger="atss_d2.data.mapper"):
        assert read_image_any_mode(path, "L")[0, :, 0].tolist() == [0, 0, 1]
        read_image_any_mode(path, "L")
    assert caplog.text.count("A 16-bit grayscale image holds values of at most 255") == 1
