"""Mixed precision: the head runs in low precision, the losses in float32."""

import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tiny_setup import small_cfg
from torch import nn


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP training needs CUDA")
def test_amp_trainer_steps_cuda():
    cfg = tiny_cfg("cuda")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.device.type == "cuda"
    recorder = LossRecorder(model)
    optimizer = build_optimizer(cfg, model)
    data = iter(lambda: batch(), None)  # the same batch, forever
    # What DefaultTrainer builds when SOLVER.AMP.ENABLED is True.
    trainer = AMPTrainer(recorder, data, optimizer)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(5):
            storage.iter = it
            trainer.run_step()  # raises FloatingPointError on a non-finite total loss
    assert recorder.head_dtypes == {torch.float16}
    assert len(recorder.losses) == 5
    for step in recorder.losses:
        for name, (dtype, value) in step.items():
            assert dtype == torch.float32, name
            assert torch.isfinite(torch.tensor(value)), (name, value)
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    # The classification loss goes down on a repeated batch.
    assert recorder.losses[-1]["loss_cls"][1] < recorder.losses[0]["loss_cls"][1]
