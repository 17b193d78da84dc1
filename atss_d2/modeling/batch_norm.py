"""
BatchNorm with frozen statistics and a trained affine transform: the backbone normalisation of
mmdetection's ATSS (``ResNet(norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True)``,
mmdet/models/backbones/resnet.py: ``train()`` puts every BatchNorm back in eval mode, so the
running statistics are used and never updated, while ``weight`` and ``bias`` get gradients).
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenStatsBatchNorm2d", "convert_to_frozen_stats"]


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """
    ``BatchNorm2d`` that always normalises with its running statistics, in training mode too,
    and never updates them; ``weight`` and ``bias`` are trainable parameters.

    Its state dict has the names of detectron2's ``FrozenBatchNorm2d`` (``weight``, ``bias``,
    ``running_mean``, ``running_var``) and no step counter, so checkpoints converted for
    ``FrozenBN`` (mmdetection's, torchvision's, detectron2's ImageNet models) load as they are;
    the ``num_batches_tracked`` of a ``BatchNorm2d`` checkpoint is dropped on loading, and, as in
    ``FrozenBatchNorm2d``, missing statistics (Caffe2 models fold them into weight and bias) are
    taken as identity. Being a ``BatchNorm2d``, it gets ``SOLVER.WEIGHT_DECAY_NORM`` in
    detectron2's parameter groups, and ``ResNet.freeze`` turns it into ``FrozenBatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, momentum=0.0, affine=True, track_running_stats=True)
        # No step counter: nothing is counted (and FrozenBN checkpoints have none).
        self.num_batches_tracked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # What a BatchNorm2d in eval mode computes (mmdetection's norm_eval), in training too:
        # one fused op, differentiable in x, weight and bias. Its backward computes the three
        # gradients in one pass from the saved input; the unfused scale-and-shift form keeps
        # more tensors alive (about 20 MiB more at the end of a 2 x 512 x 640 step's backward).
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        if local_metadata.get("version", None) is None:
            # Files without statistics (Caffe2 models): identity, as FrozenBatchNorm2d loads them.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        # nn.Module's loader, not _NormBase's: that one would add a step counter back for
        # state dicts without version metadata (e.g. converted checkpoints).
        nn.Module._load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_to_frozen_stats(module: nn.Module) -> nn.Module:
    """
    Replace every ``nn.BatchNorm2d`` in ``module`` (not its subclasses, e.g. SyncBatchNorm or
    modules already converted) by a :class:`FrozenStatsBatchNorm2d` with the same values and
    ``requires_grad``; ``FrozenBatchNorm2d`` and other layers are left as they are.

    Returns:
        the new module if ``module`` itself is a ``BatchNorm2d``, otherwise ``module``,
        converted in place.
    """
    if type(module) is nn.BatchNorm2d:
        new = FrozenStatsBatchNorm2d(module.num_features, eps=module.eps)
        new = new.to(device=module.running_mean.device, dtype=module.running_mean.dtype)
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
        return new
    for name, child in module.named_children():
        new_child = convert_to_frozen_stats(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
