"""
train_net.py and demo/demo.py end the errors a user fixes in one line and exit status 1: datasets
that cannot be registered (malformed COCO json or VOC XML, missing image directory), images
that cannot be read or whose size does not fit the annotation (also when raised in a DataLoader
worker, or in a process of --num-gpus N), and, for inference, weights whose classification
layer has another number of classes than the config. Training from such weights still works.
"""

import logging
import sys
import traceback
from pathlib import Path

import pytest
import torch
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.modeling import build_model
from tiny_setup import (
    BASE_CONFIG,
    TINY_OPTS,
    image_dicts,
    one_torch_thread,
    registered,
    tiny_cfg,
    write_coco_json,
)
from torch.multiprocessing import ProcessRaisedException

from atss_d2 import demo_cli, train_net
from atss_d2.checkpoint import LoadReport, SafeDetectionCheckpointer
from atss_d2.checkpoint.detection_checkpoint import IncompatibleWeightsError
from atss_d2.data.mapper import UnreadableImageError
from atss_d2.engine import SafePredictor

CONFIG = ["--config-file", str(BASE_CONFIG)]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A valid 2-class COCO dataset on disk: (json file, image directory, dataset dicts)."""
    root = tmp_path_factory.mktemp("cli_errors")
    dicts = image_dicts(root / "images", num_images=2)
    return write_coco_json(root / "train.json", dicts), str(root / "images"), dicts


def _exit_line(cli, argv, monkeypatch, prog):
    """The message ``cli(argv)`` exits with (as ``sys.exit(message)``: status 1)."""
    monkeypatch.setattr(sys, "argv", [prog])
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    message = exit_.value.code
    assert isinstance(message, str), message  # sys.exit(str): printed, exit status 1
    assert "\n" not in message
    return message


# Dataset registration
# ----------------------------------------------------------------------------------------------
def test_malformed_coco_json_is_one_line_in_train_net_and_demo(coco, tmp_path, monkeypatch):
    _, images, _ = coco
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    flags = ["--coco-dataset", "cli_bad_json", str(bad), images]
    line = _exit_line(train_net.cli, [*CONFIG, *flags, *TINY_OPTS], monkeypatch, "train_net.py")
    assert line.startswith(f"train_net.py: data error: {bad}: malformed JSON at line 1")
    demo_argv = [*CONFIG, *flags, "--input", images, "--output", str(tmp_path / "out")]
    line = _exit_line(demo_cli.cli, [*demo_argv, "--opts", *TINY_OPTS], monkeypatch, "demo.py")
    assert line.startswith(f"demo.py: data error: {bad}: malformed JSON at line 1")
    assert not (tmp_path / "out").exists()


def test_missing_image_directory_and_bad_voc_xml_are_one_line(coco, tmp_path, monkeypatch):
    json_file, _, _ = coco
    missing = tmp_path / "no_images"
    flags = ["--coco-dataset", "cli_no_dir", json_file, str(missing)]
    line = _exit_line(train_net.cli, [*CONFIG, *flags, *TINY_OPTS], monkeypatch, "train_net.py")
    assert line == (
        f"train_net.py: data error: COCO image directory not found: {missing} (for {json_file})"
    )

    annotations = tmp_path / "Annotations"
    annotations.mkdir()
    (annotations / "a.xml").write_text("<annotation><object>")
    (tmp_path / "JPEGImages").mkdir()
    flags = ["--voc-dataset", "cli_bad_voc", str(annotations), str(tmp_path / "JPEGImages")]
    line = _exit_line(train_net.cli, [*CONFIG, *flags, *TINY_OPTS], monkeypatch, "train_net.py")
    assert line.startswith(f"train_net.py: data error: {annotations / 'a.xml'}: malformed XML")


def test_only_registration_errors_lose_their_traceback(monkeypatch):
    # A ValueError of the training itself (a bug) is no data error: it keeps its traceback.
    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(train_net, "launch", lambda main, *a, **k: broken(*k["args"]))
    monkeypatch.setattr(sys, "argv", ["train_net.py"])
    with pytest.raises(ValueError, match="a bug"):
        train_net.cli([*CONFIG, *TINY_OPTS])


# Images that fail during training: in a DataLoader worker, or in the main process
# ----------------------------------------------------------------------------------------------
def _train_argv(name, out, workers):
    return [*CONFIG, *TINY_OPTS, "DATASETS.TRAIN", f"('{name}',)", "SOLVER.MAX_ITER", "2",
            "DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(out)]  # fmt: skip


def test_missing_image_in_a_loader_worker_is_one_line_with_the_skip_hint(
    coco, tmp_path, monkeypatch, capsys
):
    dicts = [dict(d) for d in coco[2]]
    missing = str(tmp_path / "gone.png")
    dicts[0]["file_name"] = missing
    with registered("cli_missing_image", dicts):
        argv = _train_argv("cli_missing_image", tmp_path / "out", workers=1)
        line = _exit_line(train_net.cli, argv, monkeypatch, "train_net.py")
    assert line == (
        f"train_net.py: data error: Image file not found: {missing} "
        "(DATALOADER.SKIP_UNREADABLE_IMAGES True skips unreadable training images (with a "
        "counted warning); evaluation reads every image)"
    )
    console = capsys.readouterr()
    assert "Traceback" not in console.out + console.err
    log = (tmp_path / "out" / "log.txt").read_text()  # the traceback is kept there
    assert "Exception during training" in log and "Traceback" in log and missing in log
    assert "Caught UnreadableImageError in DataLoader worker process 0" in log


def test_no_readable_training_image_with_skipping_is_one_line(coco, tmp_path, monkeypatch):
    dicts = [dict(d, file_name=str(tmp_path / f"gone{i}.png")) for i, d in enumerate(coco[2])]
    with registered("cli_all_missing", dicts):
        argv = _train_argv("cli_all_missing", tmp_path / "out", workers=1)
        argv += ["DATALOADER.SKIP_UNREADABLE_IMAGES", "True"]
        line = _exit_line(train_net.cli, argv, monkeypatch, "train_net.py")
    # Skipping is on already: no hint to turn it on.
    assert line == (
        "train_net.py: data error: None of the 2 images of the training set could be read (all "
        "were skipped as unreadable); check the image paths of the dataset"
    )
    # The traceback is kept in log.txt. (The console is checked in the test above: here
    # detectron2's logger, set up once per process, still writes to that test's capture.)
    assert "UnreadableImageError" in (tmp_path / "out" / "log.txt").read_text()


def test_image_size_mismatch_is_one_line(coco, tmp_path, monkeypatch):
    dicts = [dict(d) for d in coco[2]]
    dicts[1]["height"] = 50  # the file is 64 high, 80 wide; detectron2 says (width, height)
    with registered("cli_size_mismatch", dicts):
        for workers in (0, 1):
            argv = _train_argv("cli_size_mismatch", tmp_path / f"out{workers}", workers)
            line = _exit_line(train_net.cli, argv, monkeypatch, "train_net.py")
            assert line == (
                f"train_net.py: data error: Mismatched image shape for image "
                f"{dicts[1]['file_name']}, got (80, 64), expect (80, 50). Please check the "
                "width/height in your annotation."
            )


def test_errors_reraised_from_workers_and_processes_give_the_original_message():
    from torch._utils import ExceptionWrapper  # what the DataLoader re-raises worker errors with

    try:
        raise SizeMismatchError("Mismatched image shape for image a.png")
    except SizeMismatchError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 3")
    with pytest.raises(SizeMismatchError) as reraised:
        wrapped.reraise()
    assert "Caught SizeMismatchError in DataLoader worker process 3" in str(reraised.value)
    assert train_net.one_line_error(reraised.value) == (
        "data error: Mismatched image shape for image a.png"
    )

    # A process of --num-gpus N: torch's spawn hands the process's traceback as text.
    def raised_in_a_process(error):
        try:
            raise error
        except Exception:
            return ProcessRaisedException(traceback.format_exc(), 1, 123)

    error = raised_in_a_process(UnreadableImageError("Image file not found: b.png"))
    assert train_net.one_line_error(error).startswith(
        "data error: Image file not found: b.png (DATALOADER.SKIP_UNREADABLE_IMAGES True"
    )
    assert train_net.one_line_error(raised_in_a_process(RuntimeError("a bug"))) is None


# Weights with another number of classes, for inference
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_class_weights(tmp_path_factory):
    """A tiny model trained for 1 class (the configs of the tests below say 2)."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("w1"), "MODEL.ATSS.NUM_CLASSES", "1")
    path = tmp_path_factory.mktemp("weights") / "one_class.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


def _mismatch_message(weights):
    return (
        f"{weights}: head.cls_score has 1 classes in the checkpoint, the config says "
        "MODEL.ATSS.NUM_CLASSES 2: set MODEL.ATSS.NUM_CLASSES 1 (and register the dataset with "
        "the classes it was trained on, e.g. --classes or the same --voc-dataset folders as for "
        "training)"
    )


def test_eval_only_refuses_weights_of_another_class_count(
    coco, one_class_weights, tmp_path, monkeypatch
):
    json_file, images, _ = coco
    argv = [*CONFIG, "--coco-dataset", "cli_eval", json_file, images, "--eval-only", *TINY_OPTS,
            "DATASETS.TEST", "('cli_eval',)", "MODEL.WEIGHTS", one_class_weights,
            "OUTPUT_DIR", str(tmp_path / "eval")]  # fmt: skip
    line = _exit_line(train_net.cli, argv, monkeypatch, "train_net.py")
    assert line == "train_net.py: error: " + _mismatch_message(one_class_weights)
    assert not (tmp_path / "eval" / "inference").exists()  # nothing was evaluated


def test_demo_and_predictor_refuse_weights_of_another_class_count(
    one_class_weights, coco, tmp_path, monkeypatch
):
    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", one_class_weights)
    with pytest.raises(IncompatibleWeightsError) as e:
        SafePredictor(cfg)
    assert str(e.value) == _mismatch_message(one_class_weights)

    argv = [*CONFIG, "--input", coco[1], "--output", str(tmp_path / "out"),
            "--opts", *TINY_OPTS, "MODEL.WEIGHTS", one_class_weights]  # fmt: skip
    line = _exit_line(demo_cli.cli, argv, monkeypatch, "demo.py")
    assert line == "demo.py: error: " + _mismatch_message(one_class_weights)
    assert not (tmp_path / "out").exists()


def test_training_from_weights_of_another_class_count_still_works(
    coco, one_class_weights, tmp_path, monkeypatch
):
    json_file, images, _ = coco
    out = tmp_path / "finetune"
    args = train_net.get_parser().parse_args(
        [*CONFIG, "--coco-dataset", "cli_finetune", json_file, images, *TINY_OPTS,
         "DATASETS.TRAIN", "('cli_finetune',)", "SOLVER.MAX_ITER", "1",
         "MODEL.WEIGHTS", one_class_weights, "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    train_net.main(args)
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "the checkpoint has 1 classes, this model 2 (MODEL.ATSS.NUM_CLASSES)" in log


def test_class_count_of_the_checkpoint_from_the_layer_shapes():
    # 9 anchors per location: 27 outputs are 3 classes, whatever the model's count.
    report = LoadReport("w.pth", num_classes=2)
    report.reinitialised = [("head.cls_score.weight", (27, 64, 3, 3), (18, 64, 3, 3))]
    assert report.checkpoint_num_classes() == 3
    # A file with 1 anchor per location (its bbox_pred has 4 outputs), a model with 9.
    report.reinitialised.append(("head.bbox_pred.weight", (4, 64, 3, 3), (36, 64, 3, 3)))
    assert report.checkpoint_num_classes() == 27
    assert LoadReport("w.pth", num_classes=2).checkpoint_num_classes() is None


def test_predictor_loads_weights_of_the_same_class_count(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path)
    path = Path(tmp_path) / "two_classes.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    cfg.MODEL.WEIGHTS = str(path)
    with caplog.at_level(logging.INFO):
        predictor = SafePredictor(cfg)
    assert not predictor.head_untrained
    # DefaultPredictor's load of an empty path is not reported as "from scratch".
    assert "No checkpoint found" not in caplog.text
    assert logging.getLogger("fvcore.common.checkpoint").level == logging.NOTSET
    checkpointer = SafeDetectionCheckpointer(predictor.model)
    checkpointer.load(str(path))
    assert checkpointer.last_load_report.reinitialised == []


# The demo's config
# ----------------------------------------------------------------------------------------------
def test_demo_takes_a_shipped_config_name_and_ends_config_errors_in_one_line(tmp_path, monkeypatch):
    out = ["--input", str(tmp_path), "--output", str(tmp_path / "vis")]
    args = demo_cli.get_parser().parse_args(
        [
            "--config-file",
            "Shapes/atss_R_18_FPN_shapes.yaml",
            *out,
            "--opts",
            "MODEL.ATSS.TOPK",
            "7",
        ]
    )
    cfg = demo_cli.setup_cfg(args)
    assert cfg.MODEL.ATSS.TOPK == 7 and cfg.DATASETS.TEST == ("shapes_val",)

    shipped = ["--config-file", "Shapes/atss_R_18_FPN_shapes.yaml", *out]
    cases = [
        (["--opts", "MODEL.ATSS.NUM_CONV", "3"], "unknown config key MODEL.ATSS.NUM_CONV; did you"),
        (["--opts", "MODEL.ATSS.TOPK", "0"], "MODEL.ATSS.TOPK is 0; expected an integer >= 1"),
    ]
    for opts, expected in cases:
        line = _exit_line(demo_cli.cli, shipped + opts, monkeypatch, "demo.py")
        assert line.startswith("demo.py: config error: ") and expected in line
    lazy_config = ["--config-file", "configs/Shapes/atss_R_18_FPN_shapes.py", *out]
    line = _exit_line(demo_cli.cli, lazy_config, monkeypatch, "demo.py")
    assert "is a LazyConfig (a .py file, or the config.yaml a LazyConfig run saved)" in line
    line = _exit_line(demo_cli.cli, ["--config-file", "nope.yaml", *out], monkeypatch, "demo.py")
    assert line.startswith("demo.py: config error: ") and "nope.yaml" in line
