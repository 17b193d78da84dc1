"""
Deformable convolutions (DCNv1 and the modulated DCNv2) on ``torchvision.ops.deform_conv2d``.

detectron2's own ``DeformConv`` needs its compiled ops; torchvision ships CPU and CUDA kernels, so
the layers here run wherever torchvision does. Offsets follow the layout shared by the original
DCN code, maskrcnn-benchmark, mmcv and torchvision: for kernel tap ``k`` (row-major) of offset
group ``g``, channel ``2 * (g * K + k)`` is the y offset and the next channel the x offset. The
modulated variant predicts ``3 * K * G`` channels: offsets first, then the mask logits, which go
through a sigmoid.

Parameter names are chosen so that checkpoints map by renaming only:

- :class:`DeformConvWithOffset` (``offset``, ``conv.weight``, ``conv.bias``) is the authors'
  ``DFConv2d`` of the ATSS towers (``offset``, ``conv.weight``, ``conv.bias``).
- :class:`DeformBottleneckBlock` (``conv2_offset``, ``conv2.weight``, ``conv2.norm``) has the
  names of detectron2's ``DeformBottleneckBlock``, so checkpoints are interchangeable with a
  detectron2 build that has the compiled ops.
"""

import math
from typing import Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "DeformConvWithOffset", "DeformBottleneckBlock", "split_offset_mask"]


def split_offset_mask(
    offset_mask: Tensor, kernel_taps: int, deformable_groups: int, modulated: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    Split the output of an offset conv into offsets and (for DCNv2) a sigmoid mask.

    Args:
        offset_mask: (N, C, H, W) with C = (3 if modulated else 2) * kernel_taps * groups.

    Returns:
        offset: (N, 2 * kernel_taps * groups, H, W); mask: (N, kernel_taps * groups, H, W) or
        None.
    """
    num_offsets = 2 * kernel_taps * deformable_groups
    if not modulated:
        return offset_mask, None
    return offset_mask[:, :num_offsets], offset_mask[:, num_offsets:].sigmoid()


def offset_conv(
    in_channels: int,
    kernel_size,
    stride,
    padding,
    dilation,
    deformable_groups: int,
    modulated: bool,
) -> nn.Conv2d:
    """The regular conv that predicts a deformable conv's offsets (and mask logits): same
    geometry as the deformable conv, (3 if modulated else 2) * groups * kh * kw channels,
    zero-initialised so that training starts from a regularly sampled conv (mask 0.5)."""
    kh, kw = _pair(kernel_size)
    conv = nn.Conv2d(
        in_channels,
        (3 if modulated else 2) * deformable_groups * kh * kw,
        (kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class DeformConv(nn.Module):
    """
    A deformable convolution whose offsets (and optional mask) are inputs to ``forward``, with
    optional norm and activation like ``detectron2.layers.Conv2d``.

    Parameters: ``weight`` (C_out, C_in / groups, kh, kw) and ``bias`` (C_out) or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"be divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.norm = norm
        self.activation = activation
        # Same bound as nn.Conv2d's default (and the authors' DCN layers): U(+-1/sqrt(fan_in)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        def size(n, k, s, p, d):
            return (n + 2 * p - d * (k - 1) - 1) // s + 1

        return (
            size(height, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]),
            size(width, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1]),
        )

    def forward(self, x: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (N, C_in, H, W).
            offset: (N, 2 * G * kh * kw, H_out, W_out).
            mask: (N, G * kh * kw, H_out, W_out), already in [0, 1], or None (DCNv1).

        Returns:
            (N, C_out, H_out, W_out).
        """
        if x.numel() == 0:
            h, w = self.output_size(x.shape[-2], x.shape[-1])
            out = x.new_zeros(x.shape[0], self.out_channels, h, w) + self.weight.sum() * 0
        else:
            out = deform_conv2d(
                x,
                offset,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask,
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deformable_groups={self.deformable_groups}, "
            f"bias={self.bias is not None}"
        )


class DeformConvWithOffset(nn.Module):
    """
    A deformable conv that predicts its own offsets (and mask, if ``modulated``) with a regular
    conv of the same geometry: a drop-in replacement for ``nn.Conv2d(x)``.

    Submodules: ``offset`` (nn.Conv2d with bias, C_in -> (3 if modulated else 2) * G * kh * kw)
    and ``conv`` (:class:`DeformConv`). The default ``modulated=True`` matches the authors'
    ``DFConv2d`` used in the towers of their dcnv2 models.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        modulated: bool = True,
    ):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.modulated = modulated
        self.deformable_groups = deformable_groups
        self.kernel_taps = kh * kw
        self.offset = offset_conv(
            in_channels,
            kernel_size=(kh, kw),
            stride=stride,
            padding=padding,
            dilation=dilation,
            deformable_groups=deformable_groups,
            modulated=modulated,
        )
        self.conv = DeformConv(
            in_channels,
            out_channels,
            (kh, kw),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            deformable_groups=deformable_groups,
            bias=bias,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        offset, mask = split_offset_mask(
            self.offset(x), self.kernel_taps, self.deformable_groups, self.modulated
        )
        return self.conv(x, offset, mask)


class DeformBottleneckBlock(CNNBlockBase):
    """
    ResNet bottleneck (1x1, deformable 3x3, 1x1) with detectron2's ``DeformBottleneckBlock``
    parameter names and arguments, computed with torchvision's ``deform_conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.deform_num_groups = deform_num_groups
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        # MSRA models stride in the 1x1 conv, torchvision / ResNeXt models in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2_offset = offset_conv(
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            deformable_groups=deform_num_groups,
            modulated=deform_modulated,
        )
        self.conv2 = DeformConv(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deformable_groups=deform_num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        offset, mask = split_offset_mask(
            self.conv2_offset(out), 9, self.deform_num_groups, self.deform_modulated
        )
        out = F.relu_(self.conv2(out, offset, mask))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)
