"""
Mixed-precision training on the CPU.

detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``) autocasts to float16 on CUDA and refuses to
run without it. On the CPU, :class:`CPUAMPTrainer` runs the forward pass under CPU autocast to
bfloat16: convolutions and matrix products run in bfloat16 (oneDNN, fast on CPUs with AVX-512
BF16 or AMX), everything autocast keeps in float32 stays there, and ``ATSS.losses`` casts the
predictions to float32, so every loss is float32. bfloat16 has float32's exponent range, so no
gradient scaler is needed.
"""

import logging
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

__all__ = ["CPUAMPTrainer", "amp_trainer_class", "cpu_has_fast_bfloat16"]

logger = logging.getLogger(__name__)


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16, AMX, or AVX-512 with the
    core extensions oneDNN accepts); without it bfloat16 convolutions are emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


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
        if precision == torch.bfloat16 and not cpu_has_fast_bfloat16():
            logger.warning(
                "SOLVER.AMP.ENABLED on the CPU trains in bfloat16, which this CPU does not run "
                "natively (no AVX-512 BF16 / AMX in oneDNN): training is slower than in float32. "
                "Set SOLVER.AMP.ENABLED False."
            )

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
