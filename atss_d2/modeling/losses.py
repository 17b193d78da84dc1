"""Loss pieces of ATSS that detectron2 does not have in the form the references use."""

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["giou_loss", "centerness_target", "reduce_mean"]


def giou_loss(pred: Tensor, target: Tensor, *, eps: float = 1e-6, legacy: bool = False) -> Tensor:
    """
    Element-wise GIoU loss 1 - GIoU of (R, 4) XYXY boxes, returns (R,).

    Default: mmdetection's arithmetic (union and enclosing area clamped at ``eps``).
    ``legacy=True``: the authors' code (x2/y2 at least x1/y1, ``1e-7`` added to union and
    enclosing area).
    """
    if legacy:
        x1, y1 = pred[:, 0], pred[:, 1]
        x2, y2 = torch.max(x1, pred[:, 2]), torch.max(y1, pred[:, 3])
        pred = torch.stack([x1, y1, x2, y2], dim=1)
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    enclose_wh = (
        torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    ).clamp(min=0)
    enclose = enclose_wh[:, 0] * enclose_wh[:, 1]
    if legacy:
        union = area1 + area2 - overlap + 1e-7
        enclose = enclose + 1e-7
    else:
        union = (area1 + area2 - overlap).clamp(min=eps)
        enclose = enclose.clamp(min=eps)
    ious = overlap / union
    gious = ious - (enclose - union) / enclose
    return 1 - gious


def centerness_target(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """
    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each anchor centre w.r.t. its GT,
    (R, 4) and (R, 4) -> (R,). Positives have their centre inside the GT, so this is in (0, 1];
    a centre on or outside the border (possible only for forced positives) gives 0, never NaN.
    """
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    top_bottom = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    ratio_x = (left_right.min(dim=1).values / left_right.max(dim=1).values).clamp(min=0)
    ratio_y = (top_bottom.min(dim=1).values / top_bottom.max(dim=1).values).clamp(min=0)
    return torch.sqrt(torch.nan_to_num(ratio_x * ratio_y, nan=0.0))


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all workers (sum / world size); itself without distribution."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()
