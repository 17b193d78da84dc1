"""Anchors of the authors' maskrcnn-benchmark ATSS code ("+1" box convention)."""

from typing import List, Sequence

import torch
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)

__all__ = ["ATSSLegacyAnchorGenerator", "legacy_cell_anchors"]


def legacy_cell_anchors(
    stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]
) -> torch.Tensor:
    """
    Cell anchors of maskrcnn-benchmark's ``generate_anchors`` as the ATSS code calls it, centred
    at (0, 0) instead of at the cell centre (``DefaultAnchorGenerator`` adds ``offset * stride``).

    A box of "size" ``w`` spans ``w`` pixels inclusive, so its corners are ``-/+ (w - 1) / 2``
    around the centre. Aspect ratios (h / w) are applied to a ``stride`` x ``stride`` window with
    integer rounding (round half to even, as numpy does) and then scaled by ``size / stride``.

    Returns:
        Tensor (len(aspect_ratios) * len(sizes), 4), XYXY, ratio-major like the original.
    """
    anchors = []
    for ratio in aspect_ratios:
        # Integer widths/heights of the ratio-adjusted stride window.
        w = float(round((stride * stride / ratio) ** 0.5))
        h = float(round(w * ratio))
        for size in sizes:
            ws, hs = w * size / stride, h * size / stride
            anchors.append([-(ws - 1) / 2, -(hs - 1) / 2, (ws - 1) / 2, (hs - 1) / 2])
    return torch.tensor(anchors, dtype=torch.float64).float()


@ANCHOR_GENERATOR_REGISTRY.register()
class ATSSLegacyAnchorGenerator(DefaultAnchorGenerator):
    """
    ``DefaultAnchorGenerator`` with the cell anchors of the authors' ATSS code, for running
    their checkpoints: the anchor of size S on a level of stride s at grid cell (i, j) is
    ``(s*j + c - (S-1)/2, s*i + c - (S-1)/2, s*j + c + (S-1)/2, s*i + c + (S-1)/2)`` with
    ``c = MODEL.ANCHOR_GENERATOR.OFFSET * s``.

    The ATSS code builds its base window as ``[1, 1, s, s] - 0.5``, i.e. centred at ``s / 2``
    (upstream maskrcnn-benchmark subtracts 1 and centres at ``(s - 1) / 2``), so OFFSET 0.5
    reproduces it: stride 8, size 64 gives ``[-27.5, -27.5, 35.5, 35.5]`` at the first cell.
    """

    def _calculate_anchors(self, sizes: List[List[float]], aspect_ratios: List[List[float]]):
        # ``self.strides`` is set before the parent constructor calls this.
        return BufferList(
            [
                legacy_cell_anchors(stride, s, a)
                for stride, s, a in zip(self.strides, sizes, aspect_ratios)
            ]
        )
