"""
Loading checkpoints without arbitrary unpickling: the converter's loader and
SafeDetectionCheckpointer refuse files whose unpickling would call arbitrary Python, and still
read every legitimate format (torch zip / legacy, detectron2 model-zoo .pkl, Detectron blobs).
"""

import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.engine import hooks
from tiny_setup import image_dicts, load_script, one_torch_thread, registered, tiny_cfg
from torch import nn

from atss_d2.checkpoint import (
    SafeDetectionCheckpointer,
    UnsafeCheckpointError,
    load_checkpoint_file,
    save_detectron2_checkpoint,
)
from atss_d2.engine import ATSSTrainer, SafeAtomicCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Planted:
    """Unpickling this calls ``open(path, "w")``: the file appears if the payload runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def weights():
    return {"0.weight": torch.arange(6.0).view(2, 3, 1, 1), "0.bias": torch.tensor([1.0, -1.0])}


def model():
    return nn.Sequential(nn.Conv2d(3, 2, 1))


def planted_files(tmp_path):
    """The same malicious checkpoint as torch zip, torch legacy and model-zoo .pkl files."""
    marker = str(tmp_path / "payload_ran")
    data = {"model": weights(), "__author__": "x", "extra": Planted(marker)}
    files = {
        "zip": str(tmp_path / "evil.pth"),
        "legacy": str(tmp_path / "evil_legacy.pth"),
        "pkl": str(tmp_path / "evil.pkl"),
    }
    torch.save(data, files["zip"])
    torch.save(data, files["legacy"], _use_new_zipfile_serialization=False)
    numpy_data = dict(data, model={k: v.numpy() for k, v in data["model"].items()})
    with open(files["pkl"], "wb") as f:
        pickle.dump(numpy_data, f, protocol=2)
    assert not os.path.exists(marker)
    return marker, files


def test_the_planted_payload_is_live(tmp_path):
    # Control: a plain unpickler does run it, so the refusals below are meaningful.
    marker, files = planted_files(tmp_path)
    with open(files["pkl"], "rb") as f:
        pickle.load(f)
    assert os.path.exists(marker)


@pytest.mark.parametrize("kind", ["zip", "legacy", "pkl"])
def test_loader_refuses_planted_pickle(tmp_path, kind):
    marker, files = planted_files(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint_file(files[kind])
    assert files[kind] in str(e.value) and "Refusing to load" in str(e.value)
    assert "open" in str(e.value)  # names the global it refused
    assert not os.path.exists(marker)


@pytest.mark.parametrize("kind", ["zip", "pkl"])
def test_safe_checkpointer_refuses_planted_pickle(tmp_path, kind):
    marker, files = planted_files(tmp_path)
    checkpointer = SafeDetectionCheckpointer(model(), save_dir=str(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load") as e:
        checkpointer.resume_or_load(files[kind], resume=False)
    assert files[kind] in str(e.value)
    assert not os.path.exists(marker)


def test_converter_refuses_planted_pickle(tmp_path, capsys):
    marker, files = planted_files(tmp_path)
    tool = load_script("tools/convert_checkpoint.py")
    for source, path in (
        ("mmdet", files["zip"]),
        ("atss", files["legacy"]),
        ("torchvision", files["pkl"]),
    ):
        out = str(tmp_path / f"converted_{source}.pth")
        assert tool.main(["--source", source, path, out]) == 2
        err = capsys.readouterr().err
        assert f"error: Refusing to load '{path}'" in err
        assert not os.path.exists(out)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_converter_output_loads_with_both_checkpointers(tmp_path, suffix):
    from detectron2.checkpoint import DetectionCheckpointer

    path = str(tmp_path / ("converted" + suffix))
    save_detectron2_checkpoint(path, weights(), author="test")
    for checkpointer_class in (SafeDetectionCheckpointer, DetectionCheckpointer):
        m = model()
        extra = checkpointer_class(m).load(path)
        assert extra["__author__"] == "test"
        torch.testing.assert_close(m[0].weight, weights()["0.weight"])
        torch.testing.assert_close(m[0].bias, weights()["0.bias"])


def test_safe_checkpointer_reads_legitimate_formats(tmp_path):
    ref = weights()
    # detectron2 model-zoo .pkl written by Python 3 with protocol 2 (bytes via _codecs.encode).
    zoo = str(tmp_path / "zoo.pkl")
    with open(zoo, "wb") as f:
        data = {"model": {k: v.numpy() for k, v in ref.items()}, "__author__": "zoo"}
        data["model"]["0.scalar_stat"] = np.float64(3.0)
        pickle.dump(data, f, protocol=2)
    loaded = SafeDetectionCheckpointer(model())._load_file(zoo)
    assert loaded["__author__"] == "zoo" and loaded["model"]["0.scalar_stat"] == 3.0
    np.testing.assert_array_equal(loaded["model"]["0.weight"], ref["0.weight"].numpy())

    # Detectron / Caffe2 blobs: name matching is requested, momenta dropped.
    blobs = str(tmp_path / "blobs.pkl")
    with open(blobs, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.ones(2)}}, f)
    loaded = SafeDetectionCheckpointer(model())._load_file(blobs)
    assert loaded["matching_heuristics"] and list(loaded["model"]) == ["conv1_w"]

    # A detectron2 training checkpoint (model, optimizer and trainer state) resumes.
    m = model()
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.rand(1, 3, 4, 4)).sum().backward()
    optimizer.step()
    state = {
        "model": m.state_dict(),
        "trainer": {"iteration": 7, "optimizer": optimizer.state_dict(),
                    "hooks": {"LRScheduler": {"base_lrs": [0.1], "last_epoch": 7}}},
        "iteration": 7,
        "numpy_stat": np.arange(3),
    }  # fmt: skip
    resume = str(tmp_path / "model_0000007.pth")
    torch.save(state, resume)
    extra = SafeDetectionCheckpointer(model()).load(resume)
    assert extra["iteration"] == 7 and extra["trainer"]["optimizer"]["state"]
    np.testing.assert_array_equal(extra["numpy_stat"], np.arange(3))


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / "truncated.pkl")
    with open(path, "wb") as f:
        f.write(pickle.dumps({"model": {"a": np.ones(3)}})[:20])
    with pytest.raises(ValueError, match="Cannot read .*truncated.pkl"):
        load_checkpoint_file(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(str(tmp_path / "absent.pth"))


def test_trainer_installs_the_safe_atomic_checkpointer(tmp_path):
    """Through a built ATSSTrainer: its checkpointer, the one its PeriodicCheckpointer hook
    saves with, is a SafeAtomicCheckpointer, and resume_or_load refuses a planted MODEL.WEIGHTS
    file and a planted ``last_checkpoint`` without running their payload."""
    marker, files = planted_files(tmp_path)
    dicts = image_dicts(tmp_path / "images", num_images=2)
    with one_torch_thread(), registered("safe_ckpt_trainer", dicts) as name:
        out = tmp_path / "out"
        cfg = tiny_cfg(out, "DATASETS.TRAIN", f"('{name}',)", "MODEL.WEIGHTS", files["zip"])
        trainer = ATSSTrainer(cfg)

        checkpointer = trainer.checkpointer
        assert isinstance(checkpointer, SafeAtomicCheckpointer)
        assert checkpointer.model is trainer.model and checkpointer.save_dir == str(out)
        assert list(checkpointer.checkpointables) == ["trainer"]  # as DefaultTrainer's
        periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
        assert len(periodic) == 1 and periodic[0].checkpointer is checkpointer

        with pytest.raises(UnsafeCheckpointError, match="Refusing to load") as e:
            trainer.resume_or_load(resume=False)  # loads MODEL.WEIGHTS
        assert files["zip"] in str(e.value)
        assert not os.path.exists(marker)

        # Resuming from OUTPUT_DIR: a planted file named by last_checkpoint is refused too.
        out.mkdir(exist_ok=True)
        os.replace(files["legacy"], out / "model_0000009.pth")
        (out / "last_checkpoint").write_text("model_0000009.pth")
        with pytest.raises(UnsafeCheckpointError, match="model_0000009.pth"):
            trainer.resume_or_load(resume=True)
        assert not os.path.exists(marker)
