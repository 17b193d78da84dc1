"""
Export-friendly equivalents of the model's layers, for the ONNX export on the CPU.

:func:`prepare_for_export` returns a copy of a model with the same outputs (up to float32
rounding) whose ONNX graph runs faster in ONNX Runtime:

- BatchNorm folded into the convolution before it (:func:`fold_batch_norms`): the backbone's
  FrozenBN / FrozenStatsBN / eval-mode BN become the conv's weight and bias, so that the exported
  graph has no BatchNormalization (ONNX Runtime folds them too, but a quantizer does not);
- the 3x3, stride-1 convolutions with at least :data:`WINOGRAD_MIN_CHANNELS` input and output
  channels (the head towers, the FPN outputs, the ResNet's res4 and res5 blocks) computed with
  Winograd's minimal filtering F(4x4, 3x3) (:class:`WinogradConv2d`): 36 matrix products of
  (C_out, C_in) by (C_in, tiles) in place of the direct convolution's 9 taps per output pixel,
  2.25 x fewer multiplications. The head towers are the largest part of ATSS's arithmetic (about
  half of R-50-FPN's at 800x1333), and ONNX Runtime's direct convolution already runs them near
  the CPU's peak: fewer multiplications is what is left to gain there.

The transforms are those of Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
(CVPR 2016). In float32, F(4x4, 3x3) differs from the direct convolution by about 1e-5 of the
output's magnitude (F(2x2, 3x3): 4e-7, but a P3 head conv only 1.2 x faster, against 1.75 x).
"""

import copy
import warnings
from typing import List

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = [
    "WINOGRAD_MIN_CHANNELS",
    "WINOGRAD_MIN_PIXELS",
    "WinogradConv2d",
    "fold_batch_norms",
    "prepare_for_export",
    "use_winograd",
]

# Below this many input or output channels, or pixels, the transforms cost more than the saved
# products. Measured with ONNX Runtime on a 2-core AVX-512 CPU: a 256-channel head conv is
# 1.75 x faster on 100x168 (P3 at 800x1333), 1.45 x on 50x84, 1.15 x on 25x42, slower on 13x21;
# a ResNet bottleneck block 1.2 x faster with 256 channels (res4) and 1.14 x with 512 (res5),
# as fast with 128 (res3), slower with 64 (res2); the 80-channel classification output is
# slower at every size.
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_MIN_PIXELS = 1024

# F(4x4, 3x3): input tiles of 6x6 (stride 4), output tiles of 4x4.
_BT = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
]
_G = [
    [1 / 4, 0.0, 0.0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0.0, 0.0, 1.0],
]
_AT = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
]
_M, _A = 4, 6  # output and input tile sides


class WinogradConv2d(nn.Module):
    """
    A 3x3, stride 1, padding 1 convolution (no dilation, no groups) computed with F(4x4, 3x3):

    1. input transform: each 6x6 input tile d (stride 4, the image zero-padded by 1 before and 4
       after) becomes B^T d B, as one convolution of every channel with 36 fixed 6x6 kernels;
    2. the 36 products of the transformed weights G g G^T (C_out, C_in) by the transformed tiles
       (C_in, tiles), one batched MatMul;
    3. output transform A^T m A of each tile (one MatMul by a fixed (16, 36) matrix), then the
       4x4 blocks laid out as the image (``pixel_shuffle``) and cropped to the input's size.

    The transformed weights are computed once, in float64. Keeps the wrapped conv's ``norm`` and
    ``activation`` (detectron2's ``Conv2d``), applied after the bias.

    Inputs of fewer than ``min_pixels`` pixels go through the direct convolution instead. The
    choice depends on the input's size only, so a traced graph fixes it per call: a head traced
    on an 800x1333 image computes P3-P5 with Winograd and P6-P7 directly, on any image size.
    """

    def __init__(self, conv: nn.Conv2d, min_pixels: int = WINOGRAD_MIN_PIXELS):
        super().__init__()
        if not is_winograd_compatible(conv):
            raise ValueError(
                f"WinogradConv2d needs a 3x3 conv with stride 1, padding 1, no dilation and no "
                f"groups, got {conv}"
            )
        weight = conv.weight.detach().double()  # (O, C, 3, 3)
        g, bt, at = (torch.tensor(m, dtype=torch.float64) for m in (_G, _BT, _AT))
        # U[i, j] = (G w G^T)[i, j] for every (O, C): (36, O, C).
        u = torch.einsum("ik,ockl,jl->ijoc", g, weight, g).reshape(_A * _A, *weight.shape[:2])
        # Input transform kernels: tile -> (B^T d B)[i, j], as 36 output channels of a 6x6 conv.
        bk = torch.einsum("ik,jl->ijkl", bt, bt).reshape(_A * _A, 1, _A, _A)
        # Output transform: (A^T m A)[i, j] = sum over the 36 (k, l) of aw[i * 4 + j, k * 6 + l].
        aw = torch.einsum("ik,jl->ijkl", at, at).reshape(_M * _M, _A * _A)
        dtype = conv.weight.dtype
        self.register_buffer("weight_transformed", u.to(dtype))
        self.register_buffer("input_kernels", bk.to(dtype))
        self.register_buffer("output_matrix", aw.to(dtype))
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.out_channels = conv.out_channels
        self.min_pixels = int(min_pixels)
        self.register_buffer("weight", conv.weight.detach().clone())
        self.norm = getattr(conv, "norm", None)
        self.activation = getattr(conv, "activation", None)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if _static_pixels(x) < self.min_pixels:
            return self._finish(F.conv2d(x, self.weight, self.bias, padding=1))
        th, tw = (h + _M - 1) // _M, (w + _M - 1) // _M  # tiles per column and row
        # Zero padding 1 before (the conv's) and 4 after: the last tile is complete for any size.
        # Padded after the reshape and with an explicit value, ONNX Runtime's PadFusion folds
        # the Pad into the Conv's pads (a Pad without its value input is not fused).
        xp = F.pad(x.reshape(n * c, 1, h, w), (1, _M, 1, _M), value=0.0)
        tiles = F.conv2d(xp, self.input_kernels, stride=_M)  # (N*C, 36, th, tw)
        tiles = tiles.reshape(n, c, _A * _A, th * tw).transpose(1, 2)  # (N, 36, C, T)
        prod = torch.matmul(self.weight_transformed, tiles)  # (N, 36, O, T)
        o = self.out_channels
        out = torch.matmul(self.output_matrix, prod.reshape(n, _A * _A, o * th * tw))
        out = out.reshape(n, _M * _M, o, th * tw).transpose(1, 2)  # (N, O, 16, T)
        out = F.pixel_shuffle(out.reshape(n, o * _M * _M, th, tw), _M)  # (N, O, 4 th, 4 tw)
        out = out[:, :, :h, :w]
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return self._finish(out)

    def _finish(self, out: Tensor) -> Tensor:
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out


def _static_pixels(x: Tensor) -> int:
    """H * W of ``x``; while tracing, of the traced sample (a constant of the trace, by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(x.shape[-2]) * int(x.shape[-1])


def is_winograd_compatible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 3x3, stride 1, padding 1 ``nn.Conv2d`` without dilation or groups
    (zero padding): what :class:`WinogradConv2d` computes."""
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_winograd(conv: nn.Module, min_channels: int = WINOGRAD_MIN_CHANNELS) -> bool:
    """Whether :func:`prepare_for_export` computes ``conv`` with :class:`WinogradConv2d`."""
    return (
        is_winograd_compatible(conv)
        and conv.in_channels >= min_channels
        and conv.out_channels >= min_channels
    )


def fold_batch_norms(model: nn.Module) -> int:
    """
    Fold every eval-mode BatchNorm (``BatchNorm2d``, FrozenStatsBN, detectron2's
    ``FrozenBatchNorm2d``) that is the ``norm`` of a detectron2 ``Conv2d`` into that conv's
    weight and bias, in place (in float64, then cast back). Returns how many were folded.
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, nn.Conv2d) or not _is_frozen_bn(norm):
            continue
        scale = norm.weight.double() * (norm.running_var.double() + norm.eps).rsqrt()
        shift = norm.bias.double() - norm.running_mean.double() * scale
        bias = module.bias.double() if module.bias is not None else torch.zeros_like(shift)
        dtype = module.weight.dtype
        with torch.no_grad():
            module.weight.copy_((module.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
            module.bias = nn.Parameter((bias * scale + shift).to(dtype))
        module.norm = None
        folded += 1
    return folded


def _is_frozen_bn(norm) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.BatchNorm2d)
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.affine
    )


def _winograd_targets(model: nn.Module) -> List[nn.Module]:
    """The convs that :func:`use_winograd` accepts, each once."""
    targets = []
    for module in model.modules():
        if use_winograd(module) and all(module is not t for t in targets):
            targets.append(module)
    return targets


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Point every reference to ``old`` in ``root``'s modules (children and plain lists, as
    detectron2's ``FPN.output_convs``) at ``new``."""
    for module in root.modules():
        for name, child in list(module._modules.items()):
            if child is old:
                module._modules[name] = new
        for value in vars(module).values():
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new


def prepare_for_export(
    model: nn.Module, winograd: bool = True, min_pixels: int = WINOGRAD_MIN_PIXELS
) -> nn.Module:
    """
    A copy of ``model`` in eval mode, for export: batch norms folded
    (:func:`fold_batch_norms`) and, with ``winograd``, the 3x3 convs that :func:`use_winograd`
    accepts computed by :class:`WinogradConv2d` (on inputs of at least ``min_pixels`` pixels).
    ``model`` is not modified.
    """
    export_model = copy.deepcopy(model).eval()
    fold_batch_norms(export_model)
    if winograd:
        for conv in _winograd_targets(export_model):
            _replace(export_model, conv, WinogradConv2d(conv, min_pixels=min_pixels))
    return export_model
