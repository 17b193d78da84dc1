"""
Mixed-precision training on the CPU.

detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``) autocasts to float16 on CUDA and refuses to
run without it. On the CPU, :class:`CPUAMPTrainer` runs the forward pass under CPU autocast to
bfloat16: convolutions and matrix products run in bfloat16 (oneDNN, fast on CPUs with AVX-512
BF16 or AMX), everything autocast keeps in float32 stays there, and ``ATSS.losses`` casts the
predictions to float32, so every loss is float32. bfloat16 has float32's exponent range, so no
gradient scaler is needed.
"""

import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

__all__ = ["CPUAMPTrainer", "amp_trainer_class"]


class CPUAMPTrainer(SimpleTrainer):
    """
    detectron2's :class:`SimpleTrainer` with the model's forward pass under
    ``torch.autocast("cpu", dtype=precision)``; the backward pass and the optimizer step run
    outside autocast, on the float32 parameters. A non-finite loss stops training before the
    optimizer step, as in ``SimpleTrainer``.
    """

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def run_step(self):
        assert self.model.training, "[CPUAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            losses, loss_dict = loss_dict, {"total_loss": loss_dict}
        else:
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        losses.backward()
        # Raises FloatingPointError on a non-finite loss, before the weights change.
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def amp_trainer_class(device) -> type:
    """The trainer class of ``SOLVER.AMP.ENABLED`` on ``device`` (a ``MODEL.DEVICE`` string or
    ``torch.device``): detectron2's ``AMPTrainer`` on CUDA, :class:`CPUAMPTrainer` on the CPU."""
    if torch.device(device).type == "cpu":
        return CPUAMPTrainer
    return AMPTrainer
