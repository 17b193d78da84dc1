"""
``--resume`` as detectron2 users rely on it: a checkpoint holds the optimizer's state (SGD
momentum) and resuming restores it exactly; a resumed run whose model changed (another
``MODEL.ATSS.NUM_CLASSES``) and a ``last_checkpoint`` tag that is empty or names a missing file
are refused with one message naming the file, not a failure inside the optimizer or a load of
the output directory as weights.
"""

import logging
import os

import pytest
import torch
from tiny_setup import image_dicts, one_torch_thread, registered, tiny_cfg

from atss_d2.checkpoint import WeightsNotFoundError
from atss_d2.checkpoint.detection_checkpoint import IncompatibleWeightsError
from atss_d2.engine import ATSSTrainer

TRAIN = ["DATASETS.TRAIN", "('resume_d2_train',)", "SOLVER.MAX_ITER", "2"]


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    return image_dicts(tmp_path_factory.mktemp("resume_d2"), num_images=4)


def _trainer(out_dir, *extra):
    cfg = tiny_cfg(out_dir, *TRAIN, *extra)
    return ATSSTrainer(cfg)


@pytest.fixture(scope="module")
def trained(dicts, tmp_path_factory):
    """The output directory of a 2-iteration run (SGD, momentum 0.9): model_final.pth."""
    out_dir = tmp_path_factory.mktemp("resume_d2_out")
    with registered("resume_d2_train", dicts), one_torch_thread():
        trainer = _trainer(out_dir)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return out_dir


def test_checkpoints_hold_the_optimizer_state_and_resume_restores_it(dicts, trained):
    saved = torch.load(trained / "model_final.pth", map_location="cpu", weights_only=True)
    optimizer_state = saved["trainer"]["_trainer"]["optimizer"]
    # SGD with momentum keeps one buffer per parameter that received a gradient: after two
    # steps, a nonzero one for at least the head's layers.
    buffers = [s["momentum_buffer"] for s in optimizer_state["state"].values()]
    assert buffers and any(float(b.abs().sum()) > 0 for b in buffers)

    with registered("resume_d2_train", dicts), one_torch_thread():
        trainer = _trainer(trained, "SOLVER.MAX_ITER", "4")
        before = trainer.optimizer.state_dict()["state"]
        assert not before  # a fresh optimizer has no momentum yet
        trainer.resume_or_load(resume=True)
        assert trainer.start_iter == 2  # detectron2: the iteration after the saved one (1)
        restored = trainer.optimizer.state_dict()["state"]
    assert restored.keys() == optimizer_state["state"].keys()
    for index, state in optimizer_state["state"].items():
        assert torch.equal(restored[index]["momentum_buffer"], state["momentum_buffer"])


def test_resume_with_another_number_of_classes_names_the_tensors(dicts, trained, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("model_final.pth", "last_checkpoint"):
        (out_dir / name).write_bytes((trained / name).read_bytes())
    three = ("square", "disc", "star")
    with registered("resume_d2_train", dicts, classes=three), one_torch_thread():
        trainer = _trainer(out_dir, "MODEL.ATSS.NUM_CLASSES", "3")
        with pytest.raises(IncompatibleWeightsError) as info:
            trainer.resume_or_load(resume=True)
    message = str(info.value)
    # The classification layer: 2 classes x 64 channels x 3 x 3 in the checkpoint, 3 now.
    assert "head.cls_score.weight: (2, 64, 3, 3) in the checkpoint, (3, 64, 3, 3)" in message
    assert str(out_dir / "model_final.pth") in message and "config.yaml" in message


def test_a_checkpoint_without_optimizer_state_resumes_with_a_warning(
    dicts, trained, tmp_path, caplog
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    saved = torch.load(trained / "model_final.pth", map_location="cpu", weights_only=True)
    del saved["trainer"]["_trainer"]  # what detectron2 0.6's DefaultTrainer writes
    torch.save(saved, out_dir / "model_final.pth")
    (out_dir / "last_checkpoint").write_text("model_final.pth")
    with registered("resume_d2_train", dicts), one_torch_thread():
        trainer = _trainer(out_dir, "SOLVER.MAX_ITER", "4")
        with caplog.at_level(logging.WARNING, logger="atss_d2.engine.trainer"):
            trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    assert "holds no optimizer state" in caplog.text
    assert not trainer.optimizer.state_dict()["state"]


@pytest.mark.parametrize(
    "tag, expected",
    [("", "last_checkpoint is empty"), ("model_0000009.pth", "names 'model_0000009.pth'")],
)
def test_a_bad_last_checkpoint_tag_is_named(dicts, trained, tmp_path, tag, expected):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "model_final.pth").write_bytes((trained / "model_final.pth").read_bytes())
    (out_dir / "last_checkpoint").write_text(tag)
    with registered("resume_d2_train", dicts), one_torch_thread():
        trainer = _trainer(out_dir)
        with pytest.raises(WeightsNotFoundError) as info:
            trainer.resume_or_load(resume=True)
        # --eval-only --resume reads the same tag.
        cfg = tiny_cfg(out_dir, *TRAIN, "DATASETS.TEST", "('resume_d2_train',)")
        with pytest.raises(WeightsNotFoundError) as eval_info:
            ATSSTrainer.evaluate_weights(cfg, resume=True)
    for message in (str(info.value), str(eval_info.value)):
        assert os.path.join(str(out_dir), "last_checkpoint") in message
        assert expected in message
        assert "model_final.pth" in message  # the checkpoint that is there, to write in it


def _stepped(out_features: int, save_dir, step: bool = True):
    """A linear model, its AdamW after one step (moments of the weight's shape; none without
    ``step``) and the checkpointer of the LazyConfig flow (model, optimizer)."""
    from atss_d2.engine import SafeAtomicCheckpointer

    model = torch.nn.Sequential(torch.nn.Linear(4, out_features))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    if step:
        model(torch.ones(1, 4)).sum().backward()
        optimizer.step()
    return model, optimizer, SafeAtomicCheckpointer(model, str(save_dir), optimizer=optimizer)


def test_the_lazy_flow_checkpointer_refuses_optimizer_state_of_another_model(tmp_path):
    _, _, checkpointer = _stepped(3, tmp_path)
    checkpointer.save("model_final")
    _, optimizer, other = _stepped(2, tmp_path)
    with pytest.raises(IncompatibleWeightsError) as info:
        other.resume_or_load("", resume=True)
    assert "0.weight: (3, 4) in the checkpoint, (2, 4) in the model" in str(info.value)
    assert "0.bias: (3,) in the checkpoint, (2,) in the model" in str(info.value)
    assert optimizer.state_dict()["state"][0]["exp_avg"].shape == (2, 4)  # left as it was
    # Fine-tuning from the file loads the fitting weights and leaves the optimizer alone.
    other.resume_or_load(str(tmp_path / "model_final.pth"), resume=False)
    assert optimizer.state_dict()["state"][0]["exp_avg"].shape == (2, 4)
    # The same model resumes, with the saved moments.
    model, optimizer, same = _stepped(3, tmp_path, step=False)
    same.resume_or_load("", resume=True)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["optimizer"]
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])
