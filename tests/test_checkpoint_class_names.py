"""
The trainer saves the training set's class names in every checkpoint; inference names the boxes
with them when nothing else does, and refuses datasets that list the same classes in another
order (each class id would be another class).
"""

import logging

import pytest
import torch
from tiny_setup import CLASSES, image_dicts, one_torch_thread, registered, tiny_cfg

from atss_d2.checkpoint import SafeDetectionCheckpointer
from atss_d2.checkpoint.detection_checkpoint import IncompatibleWeightsError
from atss_d2.demo import class_metadata
from atss_d2.engine import ATSSTrainer, SafePredictor
from atss_d2.engine.predictor import check_class_names


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """model_final.pth of 2 iterations on a dataset whose classes are CLASSES."""
    root = tmp_path_factory.mktemp("class_names")
    dicts = image_dicts(root / "images", num_images=2)
    with one_torch_thread(), registered("cn_train", dicts, classes=CLASSES):
        cfg = tiny_cfg(root / "out", "DATASETS.TRAIN", "('cn_train',)", "SOLVER.MAX_ITER", "2")
        cfg.DATASETS.TEST = ()
        trainer = ATSSTrainer(cfg)
        trainer.train()
    return dicts, str(root / "out" / "model_final.pth")


def test_checkpoints_hold_the_training_class_names(trained):
    _, weights = trained
    assert torch.load(weights, weights_only=True)["thing_classes"] == list(CLASSES)
    cfg = tiny_cfg("unused")
    checkpointer = SafeDetectionCheckpointer(ATSSTrainer.build_model(cfg))
    checkpointer.load(weights)
    assert checkpointer.last_load_report.thing_classes == list(CLASSES)


def test_class_names_compared_by_hand(caplog):
    a, b = CLASSES
    check_class_names("w.pth", [a, b], [a, b], "dataset 'x'")  # the same list
    check_class_names("w.pth", None, [b, a], "dataset 'x'")  # nothing saved
    check_class_names("w.pth", [a, b], [a], "dataset 'x'")  # another count: the head check's
    with pytest.raises(IncompatibleWeightsError) as info:
        check_class_names("w.pth", [a, b], [b, a], "--classes")
    assert str(info.value).startswith(
        f"w.pth was trained on the classes ({a}, {b}) in this order, but --classes lists them "
        f"in another ({b}, {a}): each class id would be another class."
    )
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        check_class_names("w.pth", [a, b], ["x", "y"], "--classes")  # renamed: drawn as given
    assert f"w.pth was trained on the classes ({a}, {b}); --classes names them (x, y)" in (
        caplog.text
    )


def test_eval_only_refuses_a_dataset_of_the_classes_in_another_order(trained, tmp_path):
    dicts, weights = trained
    with registered("cn_swapped", dicts, classes=CLASSES[::-1]):
        cfg = tiny_cfg(tmp_path, "DATASETS.TEST", "('cn_swapped',)", "MODEL.WEIGHTS", weights)
        with pytest.raises(IncompatibleWeightsError, match="but dataset 'cn_swapped' lists them"):
            ATSSTrainer.evaluate_weights(cfg)


def test_the_demo_names_the_boxes_with_the_saved_classes(trained, tmp_path):
    _, weights = trained
    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", weights)
    cfg.DATASETS.TEST = ()
    predictor = SafePredictor(cfg)
    assert predictor.checkpoint_classes == list(CLASSES)
    metadata = class_metadata(cfg, (), None, predictor.checkpoint_classes)
    assert metadata.name == "MODEL.WEIGHTS" and metadata.thing_classes == list(CLASSES)
    # Names given on the command line come first.
    given = class_metadata(cfg, (), "x,y", predictor.checkpoint_classes)
    assert given.thing_classes == ["x", "y"]


def test_the_demo_refuses_the_classes_in_another_order(trained, tmp_path, monkeypatch):
    import sys

    from tiny_setup import BASE_CONFIG, TINY_OPTS

    from atss_d2 import demo_cli

    dicts, weights = trained
    argv = ["--config-file", str(BASE_CONFIG), "--input", dicts[0]["file_name"],
            "--output", str(tmp_path / "out"), "--classes", ",".join(CLASSES[::-1]),
            "--opts", *TINY_OPTS, "MODEL.WEIGHTS", weights]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["demo.py"])
    with pytest.raises(SystemExit) as exit_:
        demo_cli.cli(argv)
    assert exit_.value.code.startswith(f"demo.py: error: {weights} was trained on the classes")
    assert "but --classes lists them in another" in exit_.value.code
    assert not (tmp_path / "out").exists()
