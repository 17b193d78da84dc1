"""Training glue: the trainer, crash-safe checkpointing and config checks used by train_net.py."""

from .amp import CPUAMPTrainer, amp_trainer_class
from .checkpoint import AtomicCheckpointer, AtomicSaveMixin, SafeAtomicCheckpointer
from .config import (
    ConfigError,
    check_num_classes,
    merge_config_file,
    merge_config_opts,
    validate_config,
)
from .launch import launch
from .predictor import SafePredictor
from .trainer import ATSSTrainer

__all__ = [
    "ATSSTrainer",
    "AtomicCheckpointer",
    "AtomicSaveMixin",
    "CPUAMPTrainer",
    "SafeAtomicCheckpointer",
    "SafePredictor",
    "ConfigError",
    "amp_trainer_class",
    "check_num_classes",
    "launch",
    "merge_config_file",
    "merge_config_opts",
    "validate_config",
]
