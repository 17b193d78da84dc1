"""
Stopping a training run from outside without losing its work.

A cluster scheduler or a preemptible cloud machine sends SIGTERM some seconds before it kills a
job; a user presses Ctrl-C (SIGINT). :class:`StopOnSignal` turns the first such signal into a
clean stop: the current iteration finishes, a checkpoint is written (atomically, as the periodic
ones) and tagged in ``last_checkpoint``, the ``--resume`` command is logged, and the process
exits with ``128 + signal number``. A second signal exits at once. Under DDP the processes agree
(by an all-reduce after each step) on the iteration at which they stop, so that every process
saves and leaves at the same one.
"""

import logging
import os
import shlex
import signal
import sys
import threading
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StopOnSignal", "TrainingStopped"]

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(SystemExit):
    """Raised after the checkpoint of a run stopped by a signal; exit code 128 + signal."""


def resume_command() -> str:
    """The command line of this process with ``--resume`` (detectron2's flag) added."""
    argv = list(sys.argv)
    if "--resume" not in argv:
        argv.insert(1, "--resume")
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *argv])


class StopOnSignal(HookBase):
    """See the module docstring. Handlers are installed for the run (``before_train``) and the
    previous ones restored after it; outside the main thread nothing is installed."""

    def __init__(self):
        self._signal: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self._signal is not None:  # the second signal: no more waiting
            self._restore()
            logger.warning(f"Second {signal.Signals(signum).name}: exiting now")
            os.kill(os.getpid(), signum)
            return
        self._signal = signum
        logger.warning(
            f"{signal.Signals(signum).name} received: stopping after this iteration with a "
            "checkpoint (send it again to exit at once)"
        )

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def after_train(self):
        self._restore()

    def _agreed_signal(self) -> int:
        """The signal any process received (0: none); every process returns the same."""
        received = self._signal or 0
        if comm.get_world_size() == 1:
            return received
        flag = torch.tensor([received], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self):
        signum = self._agreed_signal()
        if not signum:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.trainer.checkpointer.save(name, iteration=iteration)
        if comm.is_main_process():
            logger.warning(
                f"Training stopped by {signal.Signals(signum).name} after iteration {iteration}; "
                f"saved {os.path.join(self.trainer.checkpointer.save_dir, name)}.pth. Continue "
                f"with: {resume_command()}"
            )
        raise TrainingStopped(128 + signum)
