"""
A newcomer's mistakes get a sentence that says what to do: datasets named but not on disk, an
untrained model asked for detections.
"""

import logging
import os

import pytest
from detectron2.data import MetadataCatalog
from tiny_setup import tiny_cfg

from atss_d2.engine import ConfigError, SafePredictor, validate_config
from atss_d2.engine.predictor import UNTRAINED_HEAD


def test_a_builtin_dataset_without_its_files_names_the_missing_path(tmp_path, monkeypatch):
    # detectron2 registers coco_2017_val with files under $DETECTRON2_DATASETS at import time;
    # the metadata holds the path it expects.
    expected = MetadataCatalog.get("coco_2017_val").json_file
    if os.path.exists(expected):
        pytest.skip("COCO is on disk here")
    cfg = tiny_cfg(tmp_path, "DATASETS.TEST", "('coco_2017_val',)")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, train=False)
    message = str(info.value)
    assert "DATASETS.TEST names dataset 'coco_2017_val'" in message
    assert f"{expected} does not exist" in message
    for words in ("$DETECTRON2_DATASETS", "--coco-dataset", "--voc-dataset"):
        assert words in message


def test_an_unregistered_dataset_points_to_both_registration_flags(tmp_path):
    cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", "('my_trian',)")
    with pytest.raises(ConfigError, match="'my_trian', which is not registered.*--voc-dataset"):
        validate_config(cfg)


def test_predictor_without_weights_says_the_head_is_untrained(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path)
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        predictor = SafePredictor(cfg)
    assert predictor.head_untrained
    assert f"MODEL.WEIGHTS is empty: {UNTRAINED_HEAD}" in caplog.text
    assert UNTRAINED_HEAD == "the head is randomly initialised: detections are meaningless"


def test_predictor_with_a_backbone_only_file_says_the_head_is_untrained(tmp_path, caplog):
    import torch
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg(tmp_path))
    backbone = {
        f"backbone.bottom_up.{k}": v for k, v in model.backbone.bottom_up.state_dict().items()
    }
    path = tmp_path / "R-18-backbone.pth"
    torch.save({"model": backbone}, path)
    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", str(path))
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        assert SafePredictor(cfg).head_untrained
    assert f"{path} holds no detection head" in caplog.text
    # A full checkpoint: no warning.
    full = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, full)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        assert not SafePredictor(tiny_cfg(tmp_path, "MODEL.WEIGHTS", str(full))).head_untrained
    assert UNTRAINED_HEAD not in caplog.text
