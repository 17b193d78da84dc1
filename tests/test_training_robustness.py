"""
ATSSTrainer end to end on a tiny dataset: a NaN loss stops training naming the iteration and
the loss, with the last good checkpoint kept; two runs with the same SEED give identical losses.
"""

import math
import os
import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import get_event_storage
from tiny_setup import (
    LossRecorder,
    image_dicts,
    one_torch_thread,
    registered,
    tiny_cfg,
    warm_up_scripted_focal_loss,
)

from atss_d2.engine import ATSSTrainer

NAN_ITER = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    dicts = image_dicts(tmp_path_factory.mktemp("train_images"), num_images=4)
    with registered("robust_train", dicts) as name:
        yield name


class NaNAtIteration(ATSSTrainer):
    """Its model's classification loss becomes NaN at iteration NAN_ITER."""

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        losses = model.losses

        def poisoned(*args, **kwargs):
            out = losses(*args, **kwargs)
            if get_event_storage().iter == NAN_ITER:
                out["loss_cls"] = out["loss_cls"] * float("nan")
            return out

        model.losses = poisoned
        return model


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(dataset, tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        "DATASETS.TRAIN", f"('{dataset}',)",
        "SOLVER.MAX_ITER", "8",
        "SOLVER.CHECKPOINT_PERIOD", "2",
    )  # fmt: skip
    trainer = NaNAtIteration(cfg)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert f"iteration={NAN_ITER}" in message
    assert re.search(r"'loss_cls': (np\.float64\()?nan", message) and "loss_box_reg" in message

    # Checkpoints after iterations 1 and 3; none at 5 (the step never completed), no final one.
    pths = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert pths == ["model_0000001.pth", "model_0000003.pth"]
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_0000003.pth"
    state = torch.load(tmp_path / "model_0000003.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The weights in memory are still those of the last good step: the optimizer never stepped
    # on the NaN loss, so nothing non-finite could have been saved later either.
    model = trainer.model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    resumed = ATSSTrainer.build_model(cfg)
    DetectionCheckpointer(resumed).load(str(tmp_path / "model_0000003.pth"))


def run(cfg):
    """One training run as train_net.py does it: seed from cfg.SEED, then build and train (after
    the TorchScript warm-up, without which the first run of a process differs from the rest)."""
    warm_up_scripted_focal_loss()
    seed_all_rng(cfg.SEED)
    trainer = ATSSTrainer(cfg)
    recorder = LossRecorder()
    trainer.register_hooks([recorder])
    trainer.train()
    return recorder.losses


def test_same_seed_gives_identical_losses(dataset, tmp_path):
    opts = ["DATASETS.TRAIN", f"('{dataset}',)", "SOLVER.MAX_ITER", "3",
            "INPUT.RANDOM_FLIP", "horizontal", "INPUT.MIN_SIZE_TRAIN", "(56, 64, 72)"]  # fmt: skip
    first = run(tiny_cfg(tmp_path / "a", "SEED", "7", *opts))
    second = run(tiny_cfg(tmp_path / "b", "SEED", "7", *opts))
    other = run(tiny_cfg(tmp_path / "c", "SEED", "8", *opts))
    assert len(first) == 3 and all(math.isfinite(v) for d in first for v in d.values())
    assert set(first[0]) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    assert first == second  # exactly, every loss of every iteration
    assert other != first  # the seed matters (weights, sampling, flips, sizes)
