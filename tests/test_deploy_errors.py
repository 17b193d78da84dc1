"""
tools/export_model.py on wrong input: one line naming the file, key or value at fault, before
anything is exported; a checkpoint whose head does not fit the config is refused as by
``train_net.py --eval-only`` instead of being exported with a random classification layer.
"""

import importlib.util
import subprocess
import sys

import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tiny_setup import REPO, SMALL_MODEL_OPTS, load_script, small_cfg

CONFIG = str(REPO / "configs" / "Base-ATSS.yaml")
CLASSES = ["cat", "dog", "bird"]
OPTS = [*SMALL_MODEL_OPTS, "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "40"]
OPTS += ["INPUT.MAX_SIZE_TEST", "56"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 3-class checkpoint saved with its class names."""
    work = tmp_path_factory.mktemp("deploy_errors")
    model = build_model(small_cfg(num_classes=len(CLASSES)))
    DetectionCheckpointer(model, save_dir=str(work)).save("weights", thing_classes=CLASSES)
    return str(work / "weights.pth")


def _main(*argv, config=CONFIG):
    tool = load_script("tools/export_model.py")
    return tool.main(tool.get_parser().parse_args(["--config-file", config, *argv]))


def _opts(weights, num_classes=3):
    return [*OPTS, "MODEL.ATSS.NUM_CLASSES", str(num_classes), "MODEL.WEIGHTS", weights]


def test_head_of_another_number_of_classes_is_refused(weights, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="3 classes in the checkpoint.*NUM_CLASSES 80"):
        _main("--output", str(out), *OPTS, "MODEL.WEIGHTS", weights)
    assert not (out / "model.onnx").exists()


def test_class_names_in_another_order_are_refused(weights, tmp_path):
    with pytest.raises(ValueError, match="in another"):
        _main("--output", str(tmp_path), "--classes", "dog,cat,bird", *_opts(weights))


def test_class_names_of_another_count_are_refused(weights, tmp_path):
    with pytest.raises(ValueError, match="--classes has 2 class names.*NUM_CLASSES 3"):
        _main("--output", str(tmp_path), "--classes", "cat,dog", *_opts(weights))


def test_bad_sample_images(weights, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"--sample-image: Cannot read image file {text}"):
        _main("--output", str(tmp_path / "a"), "--sample-image", str(text), *_opts(weights))
    with pytest.raises(ValueError, match=f"--sample-image {tmp_path} is not a file"):
        _main("--output", str(tmp_path / "b"), "--sample-image", str(tmp_path), *_opts(weights))
    with pytest.raises(FileNotFoundError, match="--sample-image not found: .*missing.png"):
        missing = str(tmp_path / "missing.png")
        _main("--output", str(tmp_path / "c"), "--sample-image", missing, *_opts(weights))


def test_output_that_is_a_file(weights, tmp_path):
    taken = tmp_path / "exported"
    taken.write_text("")
    with pytest.raises(ValueError, match=f"--output {taken} is a file"):
        _main("--output", str(taken), *_opts(weights))
    with pytest.raises(ValueError, match=f"--output {taken / 'sub'}: cannot create"):
        _main("--output", str(taken / "sub"), *_opts(weights))


def test_config_errors_name_the_file_or_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key MODEL.ATSS.NUM_CLASSE;"):
        _main("--output", str(tmp_path), "MODEL.ATSS.NUM_CLASSE", "3")
    with pytest.raises(ValueError, match="Config file not found: .*nope.yaml"):
        _main("--output", str(tmp_path), config=str(tmp_path / "nope.yaml"))
    lazy = str(REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.py")
    with pytest.raises(ValueError, match="is a LazyConfig.*atss_R_18_FPN_shapes.yaml"):
        _main("--output", str(tmp_path), config=lazy)


def test_onnx_export_without_onnx_installed(weights, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name)
    )
    with pytest.raises(ValueError, match="--format onnx needs the onnx package: pip install"):
        _main("--output", str(tmp_path), *_opts(weights))
    with pytest.raises(ValueError, match="--quantize needs --format onnx"):
        _main("--output", str(tmp_path), "--format", "torchscript", "--quantize", *_opts(weights))


def test_error_is_one_line_and_exit_code_2(tmp_path):
    taken = tmp_path / "exported"
    taken.write_text("")
    cmd = [sys.executable, str(REPO / "tools" / "export_model.py"), "--config-file", CONFIG]
    done = subprocess.run(
        cmd + ["--output", str(taken), *OPTS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"export_model.py: error: --output {taken} is a file, not a directory"
    ]
