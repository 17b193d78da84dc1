"""SafePredictor loads MODEL.WEIGHTS like DefaultPredictor, but never runs code from a pickle."""

import os
import pickle

import numpy as np
import pytest
import tiny_setup
import torch

from atss_d2.checkpoint.safe_load import UnsafeCheckpointError
from atss_d2.engine import SafePredictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cfg(weights=""):
    return tiny_setup.small_cfg(
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96, "MODEL.WEIGHTS", weights
    )


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loads_saved_weights(tmp_path):
    torch.manual_seed(0)
    reference = SafePredictor(small_cfg())
    with torch.no_grad():
        reference.model.head.cls_score.bias.fill_(1.5)  # a value no initialisation gives
    path = tmp_path / "model.pth"
    torch.save({"model": reference.model.state_dict()}, path)
    predictor = SafePredictor(small_cfg(str(path)))
    assert predictor.cfg.MODEL.WEIGHTS == str(path)
    assert torch.all(predictor.model.head.cls_score.bias == 1.5)
    out = predictor(np.zeros((60, 90, 3), dtype=np.uint8))
    assert out["instances"].image_size == (60, 90)


def test_refuses_code_in_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Payload(str(marker))}}, f)
    with pytest.raises(UnsafeCheckpointError, match="evil.pkl"):
        SafePredictor(small_cfg(str(path)))
    assert not marker.exists()
