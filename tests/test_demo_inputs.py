"""
The arguments of the demo and of the tools that a user can get wrong, and what they say: score
and IoU thresholds outside their range, a number of images below 1, --show without a display,
results of another dataset than --dataset, and a CUDA config on a machine without CUDA (the
demo and SafePredictor refuse it in one line; tools/export_model.py builds on the CPU, where it
traces).
"""

import json
import uuid

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from tiny_setup import (
    BASE_CONFIG,
    SMALL_MODEL_OPTS,
    TINY_OPTS,
    image_dicts,
    load_script,
    registered,
    small_cfg,
)

from atss_d2 import demo_cli
from atss_d2.engine import ConfigError, SafePredictor
from atss_d2.visualize import visualize_dataset_dicts

NO_CUDA = "MODEL.DEVICE is 'cuda', but this machine has no CUDA device; set MODEL.DEVICE cpu"


def _tool(name):
    return load_script(f"tools/{name}.py")


def _parse_error(parser, argv, capsys) -> str:
    """The error argparse ends ``argv`` with (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# Thresholds
# ----------------------------------------------------------------------------------------------
DEMO_ARGS = ["--config-file", "c.yaml", "--input", "a.png", "--output", "out"]


@pytest.mark.parametrize("value", ["1.5", "-0.2", "nan", "inf"])
def test_demo_confidence_threshold_outside_0_1(value, capsys):
    line = _parse_error(
        demo_cli.get_parser(), DEMO_ARGS + ["--confidence-threshold", value], capsys
    )
    assert line.endswith(
        f"argument --confidence-threshold: must be in [0, 1] (scores are in [0, 1]), got {value}"
    )


def test_demo_confidence_threshold_bounds_and_words(capsys):
    for value in ("0", "1", "0.25"):
        args = demo_cli.get_parser().parse_args(DEMO_ARGS + ["--confidence-threshold", value])
        assert args.confidence_threshold == float(value)
    line = _parse_error(demo_cli.get_parser(), DEMO_ARGS + ["--confidence-threshold", "x"], capsys)
    assert line.endswith("argument --confidence-threshold: not a number: 'x'")


RESULTS_ARGS = ["--input", "r.json", "--dataset", "d", "--output", "out"]


@pytest.mark.parametrize("value", ["1.5", "0", "-0.5", "nan"])
def test_analyze_results_iou_threshold_outside_0_1(value, capsys):
    parser = _tool("analyze_results").get_parser()
    line = _parse_error(parser, RESULTS_ARGS + ["--iou-threshold", value], capsys)
    assert line.endswith(f"argument --iou-threshold: must be in (0, 1], got {value}")


def test_analyze_results_thresholds_in_range(capsys):
    parser = _tool("analyze_results").get_parser()
    args = parser.parse_args(RESULTS_ARGS + ["--iou-threshold", "1", "--score-threshold", "0"])
    assert (args.iou_threshold, args.score_threshold) == (1.0, 0.0)
    line = _parse_error(parser, RESULTS_ARGS + ["--score-threshold", "2"], capsys)
    assert line.endswith(
        "argument --score-threshold: must be in [0, 1] (scores are in [0, 1]), got 2"
    )


def test_visualize_json_results_conf_threshold(capsys):
    parser = _tool("visualize_json_results").get_parser()
    line = _parse_error(parser, RESULTS_ARGS + ["--conf-threshold", "1.5"], capsys)
    assert line.endswith(
        "argument --conf-threshold: must be in [0, 1] (scores are in [0, 1]), got 1.5"
    )


# ----------------------------------------------------------------------------------------------
# --num-images
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tool, argv",
    [
        ("visualize_data", ["--config-file", "c.yaml", "--source", "annotation"]),
        ("visualize_json_results", RESULTS_ARGS),
    ],
)
@pytest.mark.parametrize("value", ["-1", "0"])
def test_num_images_below_1(tool, argv, value, capsys):
    line = _parse_error(_tool(tool).get_parser(), argv + ["--num-images", value], capsys)
    assert line.endswith(f"argument --num-images: must be at least 1, got {value}")


def test_num_images_counts_from_the_first(tmp_path):
    dicts = image_dicts(tmp_path / "images", num_images=3)
    metadata = MetadataCatalog.get(f"inputs_{uuid.uuid4().hex[:8]}").set(
        thing_classes=["square", "disc"]
    )
    written = visualize_dataset_dicts(dicts, metadata, str(tmp_path / "one"), max_images=1)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["img0.png"]
    written = visualize_dataset_dicts(dicts, metadata, str(tmp_path / "all"))
    assert len(written) == 3
    with pytest.raises(ValueError, match=r"at least 1 \(None: all\), got -1"):
        visualize_dataset_dicts(dicts, metadata, str(tmp_path / "none"), max_images=-1)


# ----------------------------------------------------------------------------------------------
# --show without a display
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="DISPLAY: X11")
def test_show_without_a_display_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    dicts = image_dicts(tmp_path / "images", num_images=1)
    with registered(f"inputs_{uuid.uuid4().hex[:8]}", dicts) as name:
        argv = ["--config-file", str(BASE_CONFIG), "--source", "annotation", "--show"]
        argv += [*TINY_OPTS, "DATASETS.TRAIN", f"('{name}',)"]
        assert _tool("visualize_data").main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "visualize_data: error: cannot show images: no display is available (DISPLAY is not "
        "set); write them to files with --output-dir instead"
    ]


# ----------------------------------------------------------------------------------------------
# Results of another dataset
# ----------------------------------------------------------------------------------------------
def _det(image_id, **extra):
    return {"image_id": image_id, "category_id": 0, "bbox": [4, 6, 26, 28], "score": 0.9, **extra}


def _visualize_results(tmp_path, dicts, detections):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(detections))
    name = f"inputs_{uuid.uuid4().hex[:8]}"
    with registered(name, dicts):
        argv = ["--input", str(results), "--dataset", name, "--output", str(tmp_path / "vis")]
        return _tool("visualize_json_results").main(argv), name, str(results)


def test_results_with_image_ids_outside_the_dataset(tmp_path, capsys):
    dicts = image_dicts(tmp_path / "images", num_images=2)  # image ids 0, 1
    # Ids 0 (in it), 5, 7, 7 (not): 2 of the 3 distinct ids are missing.
    code, name, results = _visualize_results(tmp_path, dicts, [_det(0), _det(5), _det(7), _det(7)])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"visualize_json_results: error: {results}: 2 of the 3 image ids of the results are "
        f"not in dataset '{name}' (2 images), e.g. [5, 7]: are these the results of another "
        "dataset? Give the --dataset they were made on"
    )
    assert not (tmp_path / "vis").exists()


def test_results_naming_other_images(tmp_path, capsys):
    dicts = image_dicts(tmp_path / "images", num_images=2)  # img0.png, img1.png
    # atss-demo --save-json names each detection's image: image_id 1 is not other/img0.png.
    dets = [_det(0, file_name="elsewhere/img0.png"), _det(1, file_name="other/img0.png")]
    code, name, results = _visualize_results(tmp_path, dicts, dets)
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"visualize_json_results: error: {results}: 1 of the 2 detections name another image "
        f"than dataset '{name}' has under their image_id, e.g. image_id 1: other/img0.png in "
        f"the results, {dicts[1]['file_name']} in the dataset"
    )


def test_results_of_the_dataset_are_drawn(tmp_path):
    dicts = image_dicts(tmp_path / "images", num_images=2)
    dets = [_det(0, file_name=dicts[0]["file_name"]), _det(1, file_name="copy/img1.png")]
    code, _, _ = _visualize_results(tmp_path, dicts, dets)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["img0.png", "img1.png"]


# ----------------------------------------------------------------------------------------------
# A CUDA config on a machine without CUDA
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_demo_cuda_config_without_cuda_is_one_line(tmp_path, no_cuda, capsys):
    argv = ["--config-file", str(BASE_CONFIG), "--input", str(tmp_path / "a.png")]
    argv += ["--output", str(tmp_path / "out"), "--opts", *TINY_OPTS, "MODEL.DEVICE", "cuda"]
    with pytest.raises(SystemExit) as exit_:
        demo_cli.cli(argv)
    assert str(exit_.value.code).endswith(f": config error: {NO_CUDA} (--opts MODEL.DEVICE cpu)")
    assert not (tmp_path / "out").exists()


def test_safe_predictor_cuda_config_without_cuda(no_cuda):
    with pytest.raises(ConfigError, match=rf"^{NO_CUDA}$"):
        SafePredictor(small_cfg(device="cuda"))


def test_export_builds_on_the_cpu(tmp_path, no_cuda):
    export = load_script("tools/export_model.py")
    argv = ["--config-file", str(BASE_CONFIG), "--output", str(tmp_path / "exported")]
    args = export.get_parser().parse_args(argv + [*SMALL_MODEL_OPTS, "MODEL.DEVICE", "cuda"])
    cfg = export.setup_cfg(args)
    assert cfg.MODEL.DEVICE == "cpu"
    model = build_model(cfg)  # tools/export_model.py's build: a CUDA one would fail here
    assert {p.device.type for p in model.parameters()} == {"cpu"}
