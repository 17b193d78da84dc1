"""
Box codings of ATSS: anchor deltas ("BOX") and anchor-free distances ("POINT").

The arithmetic follows mmdetection's ``DeltaXYWHBBoxCoder`` (multiply by the std 1/weight, clamp
dw/dh on both sides at log(1000/16)) so that converted mmdetection models decode the same boxes.
``legacy_plus_one=True`` follows the authors' maskrcnn-benchmark code instead: widths are
x2 - x1 + 1, decoded boxes are ctr -/+ 0.5 * (w - 1), and dw/dh are clamped from above only.
"""

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["ATSSBoxCoder", "ATSSPointCoder"]

_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class ATSSBoxCoder:
    """Deltas (dx, dy, dw, dh), scaled by ``weights``, of a box relative to an anchor box."""

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        *,
        scale_clamp: float = _DEFAULT_SCALE_CLAMP,
        legacy_plus_one: bool = False,
    ):
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"BBOX_REG_WEIGHTS must be 4 positive numbers, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)
        self.legacy_plus_one = bool(legacy_plus_one)

    def get_deltas(self, anchors: Tensor, target: Tensor) -> Tensor:
        """(R, 4) anchors and (R, 4) target boxes -> (R, 4) deltas."""
        one = 1.0 if self.legacy_plus_one else 0.0
        aw = anchors[:, 2] - anchors[:, 0] + one
        ah = anchors[:, 3] - anchors[:, 1] + one
        ax = (anchors[:, 0] + anchors[:, 2]) * 0.5
        ay = (anchors[:, 1] + anchors[:, 3]) * 0.5
        tw = target[:, 2] - target[:, 0] + one
        th = target[:, 3] - target[:, 1] + one
        tx = (target[:, 0] + target[:, 2]) * 0.5
        ty = (target[:, 1] + target[:, 3]) * 0.5
        wx, wy, ww, wh = self.weights
        return torch.stack(
            [
                wx * (tx - ax) / aw,
                wy * (ty - ay) / ah,
                ww * torch.log(tw / aw),
                wh * torch.log(th / ah),
            ],
            dim=1,
        )

    def apply_deltas(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """(R, 4) deltas and (R, 4) anchors -> (R, 4) decoded XYXY boxes."""
        anchors = anchors.to(deltas.dtype)
        if self.legacy_plus_one:
            return self._apply_legacy(deltas, anchors)
        stds = deltas.new_tensor([1.0 / w for w in self.weights])
        d = deltas * stds
        centers = (anchors[:, :2] + anchors[:, 2:]) * 0.5
        sizes = anchors[:, 2:] - anchors[:, :2]
        dwh = d[:, 2:].clamp(min=-self.scale_clamp, max=self.scale_clamp)
        ctr = centers + sizes * d[:, :2]
        wh = sizes * dwh.exp()
        return torch.cat([ctr - wh * 0.5, ctr + wh * 0.5], dim=1)

    def _apply_legacy(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        widths = anchors[:, 2] - anchors[:, 0] + 1
        heights = anchors[:, 3] - anchors[:, 1] + 1
        cx = (anchors[:, 2] + anchors[:, 0]) / 2
        cy = (anchors[:, 3] + anchors[:, 1]) / 2
        dw = torch.clamp(deltas[:, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.scale_clamp)
        px = deltas[:, 0] / wx * widths + cx
        py = deltas[:, 1] / wy * heights + cy
        pw = torch.exp(dw) * widths
        ph = torch.exp(dh) * heights
        return torch.stack(
            [px - 0.5 * (pw - 1), py - 0.5 * (ph - 1), px + 0.5 * (pw - 1), py + 0.5 * (ph - 1)],
            dim=1,
        )


class ATSSPointCoder:
    """
    Anchor-free coding: (l, t, r, b) distances from the anchor centre, in units of the anchor's
    stride, recovered from the anchor box as width / ``anchor_scale`` (anchors are
    ``anchor_scale`` x stride wide; 8 in ATSS).
    """

    def __init__(self, anchor_scale: float = 8.0, *, legacy_plus_one: bool = False):
        self.anchor_scale = float(anchor_scale)
        self.legacy_plus_one = bool(legacy_plus_one)

    def _unit(self, anchors: Tensor):
        one = 1.0 if self.legacy_plus_one else 0.0
        uw = (anchors[:, 2] - anchors[:, 0] + one) / self.anchor_scale
        uh = (anchors[:, 3] - anchors[:, 1] + one) / self.anchor_scale
        cx = (anchors[:, 2] + anchors[:, 0]) / 2
        cy = (anchors[:, 3] + anchors[:, 1]) / 2
        return cx, cy, uw, uh

    def get_deltas(self, anchors: Tensor, target: Tensor) -> Tensor:
        cx, cy, uw, uh = self._unit(anchors)
        return torch.stack(
            [
                (cx - target[:, 0]) / uw,
                (cy - target[:, 1]) / uh,
                (target[:, 2] - cx) / uw,
                (target[:, 3] - cy) / uh,
            ],
            dim=1,
        )

    def apply_deltas(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        anchors = anchors.to(deltas.dtype)
        cx, cy, uw, uh = self._unit(anchors)
        return torch.stack(
            [
                cx - deltas[:, 0] * uw,
                cy - deltas[:, 1] * uh,
                cx + deltas[:, 2] * uw,
                cy + deltas[:, 3] * uh,
            ],
            dim=1,
        )
