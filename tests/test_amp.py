"""Mixed precision: the head runs in low precision, the losses in float32; SOLVER.AMP.ENABLED
trains with detectron2's AMPTrainer on CUDA and atss_d2's bfloat16 CPUAMPTrainer on the CPU."""

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tiny_setup import image_dicts, one_torch_thread, registered, small_cfg
from tiny_setup import tiny_cfg as trainer_cfg
from torch import nn

from atss_d2.engine import ATSSTrainer, CPUAMPTrainer, amp_trainer_class


def tiny_cfg(device):
    return small_cfg("SOLVER.AMP.ENABLED", True, "SOLVER.BASE_LR", 0.01, device=device)


def batch(seed=0):
    """Two 64x96 images with two GTs each, and one without GT."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for boxes, classes in (
        ([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]], [0, 2]),
        ([[0.0, 0.0, 40.0, 30.0], [50.0, 20.0, 95.0, 63.0]], [1, 1]),
        ([], []),
    ):
        inst = Instances((64, 96))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.tensor(classes, dtype=torch.long)
        out.append({"image": torch.rand(3, 64, 96, generator=g) * 255, "instances": inst})
    return out


class LossRecorder(nn.Module):
    """Runs the model and records the dtype and value of every loss, and the head's output
    dtypes (to see that autocast is really on)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.losses = []
        self.head_dtypes = set()
        model.head.register_forward_hook(
            lambda m, i, out: self.head_dtypes.update(x.dtype for level in out for x in level)
        )

    def forward(self, data):
        losses = self.model(data)
        self.losses.append({k: (v.dtype, v.item()) for k, v in losses.items()})
        return losses


def test_losses_float32_under_cpu_autocast():
    # bfloat16 autocast on the CPU runs the same code path as float16 on CUDA.
    torch.manual_seed(0)
    model = LossRecorder(build_model(tiny_cfg("cpu")).train())
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch())
    assert model.head_dtypes == {torch.bfloat16}
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value) and value > 0, name
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def run_amp_steps(device: str, steps: int = 5):
    """``steps`` steps of ``amp_trainer_class(device)`` (what ATSSTrainer builds with
    SOLVER.AMP.ENABLED) on a repeated batch: (recorder, parameters before, parameters after)."""
    cfg = tiny_cfg(device)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.device.type == device
    recorder = LossRecorder(model)
    optimizer = build_optimizer(cfg, model)
    data = iter(lambda: batch(), None)  # the same batch, forever
    trainer = amp_trainer_class(device)(recorder, data, optimizer)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(steps):
            storage.iter = it
            trainer.run_step()  # raises FloatingPointError on a non-finite total loss
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    return recorder, before, after


@pytest.mark.parametrize(
    "device, precision",
    [
        ("cpu", torch.bfloat16),
        pytest.param(
            "cuda",
            torch.float16,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_amp_trainer_steps(device, precision):
    recorder, before, after = run_amp_steps(device)
    assert recorder.head_dtypes == {precision}
    assert len(recorder.losses) == 5
    for step in recorder.losses:
        for name, (dtype, value) in step.items():
            assert dtype == torch.float32, name
            assert torch.isfinite(torch.tensor(value)), (name, value)
    # The weights stay float32 (autocast casts copies) and are updated.
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    # The classification loss goes down on a repeated batch.
    assert recorder.losses[-1]["loss_cls"][1] < recorder.losses[0]["loss_cls"][1]


class NaNLoss(nn.Module):
    """A model whose loss is NaN after a forward pass through its one weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, data):
        return {"loss_cls": self.weight * float("nan")}


def test_cpu_amp_trainer_stops_on_non_finite_loss():
    model = NaNLoss()
    trainer = CPUAMPTrainer(
        model, iter(lambda: batch(), None), torch.optim.SGD(model.parameters(), 1.0)
    )
    with EventStorage(0) as storage, pytest.raises(FloatingPointError, match="iteration=0"):
        trainer.storage = storage
        trainer.run_step()
    assert model.weight.item() == 1.0  # no optimizer step


def test_atss_trainer_trains_with_the_cpu_amp_trainer(tmp_path):
    dicts = image_dicts(tmp_path / "images", num_images=2)
    with one_torch_thread(), registered("amp_cpu_trainer", dicts) as name:
        for amp, expected in ((False, SimpleTrainer), (True, CPUAMPTrainer)):
            cfg = trainer_cfg(tmp_path / f"amp_{amp}", "DATASETS.TRAIN", f"('{name}',)")
            cfg.SOLVER.AMP.ENABLED = amp
            trainer = ATSSTrainer(cfg)
            assert type(trainer._trainer) is expected
        trainer.resume_or_load(resume=False)
        trainer.train()  # SOLVER.MAX_ITER bfloat16 steps, then the final checkpoint
        assert trainer.iter == cfg.SOLVER.MAX_ITER
        assert (tmp_path / "amp_True" / "model_final.pth").is_file()


def test_cpu_amp_trainer_warns_without_native_bfloat16(monkeypatch, caplog):
    import atss_d2.engine.amp as amp

    model = NaNLoss()
    for native, warned in ((True, False), (False, True)):
        monkeypatch.setattr(amp, "cpu_has_fast_bfloat16", lambda: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="atss_d2.engine.amp"):
            CPUAMPTrainer(model, [], torch.optim.SGD(model.parameters(), 1.0))
        assert ("does not run natively" in caplog.text) == warned
