"""
Config errors stop train_net.py before training, naming the key and the file (or command-line
option): unknown keys, wrong types, bad YAML, unregistered datasets, and MODEL.ATSS.NUM_CLASSES
that does not match the dataset's classes.
"""

import logging
import os
import re
import subprocess
import sys

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from tiny_setup import BASE_CONFIG, REPO, image_dicts, registered, tiny_cfg, write_coco_json

from atss_d2 import add_atss_config
from atss_d2.engine import (
    ATSSTrainer,
    ConfigError,
    merge_config_file,
    merge_config_opts,
    validate_config,
)
from atss_d2.engine.config import warn_unused_retinanet_keys


def fresh_cfg():
    cfg = get_cfg()
    add_atss_config(cfg)
    return cfg


def write(path, text):
    path.write_text(text)
    return str(path)


def test_unknown_key_names_the_file_that_sets_it(tmp_path):
    base = write(
        tmp_path / "base.yaml", f'_BASE_: "{BASE_CONFIG}"\nMODEL:\n  ATSS:\n    NUM_CONV: 2\n'
    )
    child = write(tmp_path / "child.yaml", '_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    for path in (base, child):
        with pytest.raises(ConfigError) as info:
            merge_config_file(fresh_cfg(), path)
        message = str(info.value)
        # The key is set in base.yaml, whichever file was loaded.
        assert message.startswith(f"{base}: unknown config key MODEL.ATSS.NUM_CONV")
        assert "did you mean MODEL.ATSS.NUM_CONVS" in message

    typo = write(tmp_path / "typo.yaml", f'_BASE_: "{BASE_CONFIG}"\nSOLVR:\n  MAX_ITER: 10\n')
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key SOLVR"):
        merge_config_file(fresh_cfg(), typo)


def test_wrong_type_names_key_file_and_types(tmp_path):
    bad = write(tmp_path / "bad.yaml", f'_BASE_: "{BASE_CONFIG}"\nSOLVER:\n  MAX_ITER: many\n')
    with pytest.raises(ConfigError) as info:
        merge_config_file(fresh_cfg(), bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: config key SOLVER.MAX_ITER has the wrong type")
    assert "<class 'int'>" in message and "many" in message

    # yacs does not turn an int into a float: BASE_LR: 1 is an error, and says so.
    int_lr = write(tmp_path / "int_lr.yaml", "SOLVER:\n  BASE_LR: 1\n")
    with pytest.raises(ConfigError, match=r"int_lr\.yaml: config key SOLVER\.BASE_LR.*float"):
        merge_config_file(fresh_cfg(), int_lr)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found: .*nope.yaml"):
        merge_config_file(fresh_cfg(), str(tmp_path / "nope.yaml"))
    broken = write(tmp_path / "broken.yaml", "MODEL:\n  ATSS: [unclosed\n")
    with pytest.raises(ConfigError, match=r"(?s)broken\.yaml .*not valid YAML.*line 2"):
        merge_config_file(fresh_cfg(), broken)
    orphan = write(tmp_path / "orphan.yaml", '_BASE_: "missing_base.yaml"\n')
    with pytest.raises(ConfigError, match=r"orphan\.yaml: cannot read .*missing_base\.yaml"):
        merge_config_file(fresh_cfg(), orphan)


def test_command_line_options():
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "command-line options: unknown config key MODEL.ATSS.TOPKK; "
            "did you mean MODEL.ATSS.TOPK?"
        ),
    ):
        merge_config_opts(fresh_cfg(), ["MODEL.ATSS.TOPKK", "9"])
    with pytest.raises(
        ConfigError,
        match="options: config key SOLVER.MAX_ITER has the wrong type: expected <class 'int'>",
    ):
        merge_config_opts(fresh_cfg(), ["SOLVER.MAX_ITER", "ten"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        merge_config_opts(fresh_cfg(), ["SOLVER.MAX_ITER"])
    cfg = merge_config_opts(fresh_cfg(), ["SOLVER.MAX_ITER", "10"])
    assert cfg.SOLVER.MAX_ITER == 10


def test_num_classes_must_match_the_datasets(tmp_path):
    with registered("cfg_two_classes", [], classes=("a", "b")) as name:
        cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)")
        validate_config(cfg)  # 2 == 2
        cfg.MODEL.ATSS.NUM_CLASSES = 80
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
        assert str(info.value) == (
            "MODEL.ATSS.NUM_CLASSES is 80, but dataset 'cfg_two_classes' has 2 classes (a, b); "
            "set MODEL.ATSS.NUM_CLASSES 2"
        )
        # The test sets are checked too, also for --eval-only.
        cfg = tiny_cfg(
            tmp_path, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "('shapes_val',)"
        )
        with pytest.raises(ConfigError, match="'shapes_val' has 3 classes"):
            validate_config(cfg, train=False)


def test_datasets_must_name_the_same_classes_in_the_same_order(tmp_path):
    """Same count, other order: class id 0 would be "a" in training and "b" in evaluation."""
    with registered("cfg_ab", [], classes=("a", "b")) as ab, registered(
        "cfg_ba", [], classes=("b", "a")
    ) as ba, registered("cfg_ab2", [], classes=("a", "b")) as ab2:
        opts = ["MODEL.ATSS.NUM_CLASSES", "2", "DATASETS.TRAIN", f"('{ab}',)"]
        validate_config(tiny_cfg(tmp_path, *opts, "DATASETS.TEST", f"('{ab2}',)"))
        for train in (True, False):  # --eval-only: the registered training set takes part
            cfg = tiny_cfg(tmp_path, *opts, "DATASETS.TEST", f"('{ba}',)")
            with pytest.raises(ConfigError) as info:
                validate_config(cfg, train=train)
            assert str(info.value).startswith(
                "datasets 'cfg_ab' and 'cfg_ba' name their classes differently (a, b / b, a)"
            )
        # An unregistered training set does not stop --eval-only.
        cfg = tiny_cfg(tmp_path, "MODEL.ATSS.NUM_CLASSES", "2", "DATASETS.TRAIN", "('nowhere',)")
        cfg.DATASETS.TEST = (ba,)
        validate_config(cfg, train=False)


def test_other_class_names_are_a_warning_and_unused_builtin_splits_take_no_part(tmp_path, caplog):
    with registered("cfg_xy", [], classes=("x", "y")) as xy, registered(
        "cfg_ab3", [], classes=("a", "b")
    ) as ab:
        opts = ["MODEL.ATSS.NUM_CLASSES", "2", "DATASETS.TRAIN", f"('{ab}',)"]
        with caplog.at_level(logging.WARNING, logger="atss_d2.engine.config"):
            validate_config(tiny_cfg(tmp_path, *opts, "DATASETS.TEST", f"('{xy}',)"))
        assert (
            "datasets 'cfg_ab3' and 'cfg_xy' name their classes differently (a, b / x, y): "
            "class i is taken to be the same class in both"
        ) in caplog.text
    # detectron2 registers coco_2017_train whether or not it was downloaded: with its files
    # absent it says nothing about an 80-class model evaluated on another dataset.
    classes = list(MetadataCatalog.get("coco_2017_train").thing_classes)
    classes[3] = "motorbike"
    with registered("cfg_coco_like", [], classes=classes) as name:
        cfg = tiny_cfg(tmp_path, "MODEL.ATSS.NUM_CLASSES", "80", "DATASETS.TEST", f"('{name}',)")
        cfg.DATASETS.TRAIN = ("coco_2017_train",)
        if os.path.exists(MetadataCatalog.get("coco_2017_train").json_file):
            pytest.skip("COCO is downloaded here")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="atss_d2.engine.config"):
            validate_config(cfg, train=False)
        assert "coco_2017_train" not in caplog.text


def test_retinanet_keys_are_named_as_unused(tmp_path, caplog):
    cfg = tiny_cfg(
        tmp_path, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3", "MODEL.RETINANET.IOU_THRESHOLDS",
        "[0.4, 0.6]", "MODEL.RETINANET.NORM", "",  # detectron2's default: no warning
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="atss_d2.engine.config"):
        assert warn_unused_retinanet_keys(cfg) == ["IOU_THRESHOLDS", "SCORE_THRESH_TEST"]
    assert (
        "MODEL.RETINANET.SCORE_THRESH_TEST is 0.3, but the ATSS model does not read "
        "MODEL.RETINANET: set MODEL.ATSS.SCORE_THRESH_TEST instead"
    ) in caplog.text
    assert "MODEL.RETINANET.IOU_THRESHOLDS is [0.4, 0.6], but" in caplog.text
    assert "ATSS has no such setting" in caplog.text
    # Another meta-architecture reads them.
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    assert warn_unused_retinanet_keys(cfg) == []


def test_num_classes_of_a_lazy_coco_dataset_is_checked_when_loaded(tmp_path):
    # A COCO json's classes are known only once it is read: validate_config cannot check them,
    # the trainer's loader does, before any training step.
    dicts = image_dicts(tmp_path / "images", num_images=2)
    json_file = write_coco_json(tmp_path / "train.json", dicts, classes=("a", "b", "c"))
    register_coco_instances("cfg_lazy_coco", {}, json_file, str(tmp_path / "images"))
    try:
        cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", "('cfg_lazy_coco',)")
        validate_config(cfg)
        with pytest.raises(
            ConfigError, match="NUM_CLASSES is 2, but dataset 'cfg_lazy_coco' has 3"
        ):
            ATSSTrainer.build_train_loader(cfg)
    finally:
        DatasetCatalog.remove("cfg_lazy_coco")
        MetadataCatalog.remove("cfg_lazy_coco")


def test_unregistered_dataset_and_bad_solver(tmp_path):
    cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", "('shapes_trian',)")
    with pytest.raises(
        ConfigError, match="DATASETS.TRAIN names dataset 'shapes_trian'.*shapes_train"
    ):
        validate_config(cfg)
    cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", "('shapes_train',)", "MODEL.ATSS.NUM_CLASSES", "3")
    cfg.SOLVER.CHECKPOINT_PERIOD = 0
    with pytest.raises(ConfigError, match="SOLVER.CHECKPOINT_PERIOD must be positive"):
        validate_config(cfg)


def test_train_net_reports_config_errors_cleanly(tmp_path):
    bad = write(tmp_path / "bad.yaml", f'_BASE_: "{BASE_CONFIG}"\nMODEL:\n  ATSS:\n    TOPKK: 9\n')
    result = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--config-file", bad],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    # A line of its own anywhere in stderr, not necessarily the last: a library may print
    # warnings after it (e.g. at exit).
    assert (
        f"train_net.py: config error: {bad}: unknown config key MODEL.ATSS.TOPKK; "
        "did you mean MODEL.ATSS.TOPK?"
    ) in [line.strip() for line in stderr.splitlines()], stderr
    assert "Traceback" not in stderr
