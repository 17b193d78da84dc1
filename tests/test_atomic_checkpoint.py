"""
AtomicCheckpointer: a save that dies while writing (simulated deterministically: torch.save
writes half a file and raises, the rename of the tag fails, a run killed mid-write leaves a
temporary file) never leaves ``last_checkpoint`` naming a truncated file, never damages the
file it replaces, and non-finite weights are never saved.
"""

import logging
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from atss_d2.checkpoint import UnsafeCheckpointError
from atss_d2.engine import AtomicCheckpointer, AtomicSaveMixin, SafeAtomicCheckpointer


def small_model(value: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def tagged(save_dir) -> str:
    with open(os.path.join(save_dir, "last_checkpoint")) as f:
        return f.read()


def loaded_value(path) -> float:
    model = small_model(0.0)
    DetectionCheckpointer(model).load(str(path))
    return model[0].weight[0, 0].item()


class CrashingSave:
    """Stands in for torch.save: writes the first half of the real bytes, then raises."""

    def __init__(self, real_save):
        self.real_save = real_save

    def __call__(self, obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        self.real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise OSError(28, "No space left on device (simulated)")


@pytest.fixture
def crash_in_torch_save(monkeypatch):
    def arm():
        monkeypatch.setattr(torch, "save", CrashingSave(torch.save))

    return arm


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, crash_in_torch_save):
    model = small_model(1.0)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    assert tagged(tmp_path) == "model_0000001.pth"

    with torch.no_grad():
        model[0].weight.fill_(2.0)
    crash_in_torch_save()
    with pytest.raises(OSError, match="simulated"):
        ckpt.save("model_0000002", iteration=2)
    assert tagged(tmp_path) == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert loaded_value(tmp_path / "model_0000001.pth") == 1.0

    # What --resume does: the tagged file loads, with its iteration.
    fresh = small_model(0.0)
    extra = AtomicCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and fresh[0].weight[0, 0].item() == 1.0


def test_crash_while_overwriting_keeps_the_old_file(tmp_path, crash_in_torch_save):
    # model_final.pth is rewritten by every run that finishes in the same directory.
    model = small_model(1.0)
    AtomicCheckpointer(model, str(tmp_path)).save("model_final")
    crash_in_torch_save()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    with pytest.raises(OSError):
        AtomicCheckpointer(model, str(tmp_path)).save("model_final")
    assert loaded_value(tmp_path / "model_final.pth") == 1.0

    # The same crash with detectron2's own checkpointer truncates the file it overwrites.
    with pytest.raises(OSError):
        DetectionCheckpointer(model, str(tmp_path)).save("model_final")
    with pytest.raises(Exception):
        loaded_value(tmp_path / "model_final.pth")


def test_crash_while_tagging_keeps_previous_tag(tmp_path, monkeypatch):
    model = small_model(1.0)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError("killed while renaming the tag (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save("model_0000002")
    # The new file is complete, but the tag still names the previous, complete one.
    assert tagged(tmp_path) == "model_0000001.pth"
    assert loaded_value(tmp_path / "model_0000002.pth") == 1.0
    assert not (tmp_path / "last_checkpoint.tmp").exists()


def test_leftover_of_a_killed_save_is_ignored_and_cleaned(tmp_path):
    model = small_model(1.0)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    # kill -9 during the next save: half a temporary file, nothing renamed.
    (tmp_path / "model_0000002.pth.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert ckpt.get_all_checkpoint_files() == [str(tmp_path / "model_0000001.pth")]
    ckpt.save("model_0000003")
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000003.pth",
    ]


def test_non_finite_weights_are_not_saved(tmp_path, caplog):
    model = small_model(1.0)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with caplog.at_level(logging.ERROR):
        ckpt.save("model_0000002")
    assert not (tmp_path / "model_0000002.pth").exists()
    assert tagged(tmp_path) == "model_0000001.pth"
    assert "2.bias" in caplog.text and "model_0000001.pth" in caplog.text
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    ckpt.save("model_0000003")
    assert not (tmp_path / "model_0000003.pth").exists()


def test_mixin_combines_with_another_checkpointer(tmp_path):
    """How it composes with a checkpointer that changes loading (e.g. a safe loader)."""
    calls = []

    class LoggingLoadCheckpointer(DetectionCheckpointer):
        def _load_file(self, filename):
            calls.append(os.path.basename(filename))
            return super()._load_file(filename)

    class Combined(AtomicSaveMixin, LoggingLoadCheckpointer):
        pass

    model = small_model(1.0)
    ckpt = Combined(model, str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    assert tagged(tmp_path) == "model_0000001.pth"
    fresh = small_model(0.0)
    Combined(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert calls == ["model_0000001.pth"] and fresh[0].weight[0, 0].item() == 1.0


class _NamesAGlobal:
    """Pickles as a call of a global (here a harmless one): what a malicious file does."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_trainer_checkpointer_is_atomic_and_loads_safely(tmp_path, crash_in_torch_save):
    model = small_model(1.0)
    ckpt = SafeAtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    fresh = small_model(0.0)
    extra = SafeAtomicCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and fresh[0].weight[0, 0].item() == 1.0

    # A tagged file that needs code to unpickle is refused, naming the file.
    torch.save({"model": model.state_dict(), "extra": _NamesAGlobal()}, tmp_path / "evil.pth")
    ckpt.tag_last_checkpoint("evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        SafeAtomicCheckpointer(small_model(0.0), str(tmp_path)).resume_or_load("", resume=True)

    ckpt.tag_last_checkpoint("model_0000001.pth")
    crash_in_torch_save()
    with pytest.raises(OSError):
        ckpt.save("model_0000002")
    assert tagged(tmp_path) == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()


def test_trainer_checkpoints_record_the_input_and_a_model_reading_another_is_warned(
    tmp_path, caplog
):
    from detectron2.modeling import build_model
    from tiny_setup import small_cfg

    from atss_d2.checkpoint import SafeDetectionCheckpointer

    # Base-ATSS.yaml reads RGB with torchvision's ImageNet mean and std (0-255 pixels); R-18 has
    # basic blocks, so no stride placement is recorded.
    trained = build_model(small_cfg())
    SafeAtomicCheckpointer(trained, str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["input_convention"]
    assert saved["INPUT.FORMAT"] == "RGB"
    assert saved["MODEL.PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert saved["MODEL.PIXEL_STD"] == pytest.approx([58.395, 57.12, 57.375])
    assert "MODEL.RESNETS.STRIDE_IN_1X1" not in saved

    with caplog.at_level(logging.WARNING, logger="atss_d2.checkpoint"):
        checkpointer = SafeDetectionCheckpointer(build_model(small_cfg()))
        checkpointer.load(str(tmp_path / "model_final.pth"))
    assert checkpointer.last_load_report.input_overrides == []
    assert "holds weights trained on" not in caplog.text

    bgr = ["INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]"]
    with caplog.at_level(logging.WARNING, logger="atss_d2.checkpoint"):
        checkpointer = SafeDetectionCheckpointer(build_model(small_cfg(*bgr)))
        checkpointer.load(str(tmp_path / "model_final.pth"))
    overrides = checkpointer.last_load_report.input_overrides
    assert overrides[:2] == ["INPUT.FORMAT", "RGB"] and overrides[2] == "MODEL.PIXEL_MEAN"
    assert [float(v) for v in overrides[3].strip("[]").split(",")] == pytest.approx(
        [123.675, 116.28, 103.53]
    )
    assert len(overrides) == 4  # the std is the same
    assert "holds weights trained on RGB input" in caplog.text
