"""
Cutting large annotated photos (aerial or satellite images, scans) into fixed-size tiles, the
usual way to train a detector on images far larger than its input size.
"""

from typing import Iterable, List, Sequence, Tuple

__all__ = ["tile_boxes", "tile_origins"]


def tile_origins(length: int, tile: int) -> List[int]:
    """
    Start offsets of tiles of size ``tile`` covering ``[0, length)``: every ``tile`` pixels,
    the last one moved back to end at the border (so it overlaps its neighbour) instead of
    running past it. A length shorter than a tile gives one tile at 0.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_boxes(
    boxes: Iterable[Sequence[float]],
    x0: int,
    y0: int,
    size: int,
    min_kept: float = 0.5,
    min_side: float = 2.0,
) -> Tuple[List[List[float]], List[bool]]:
    """
    The boxes (XYXY, absolute pixels) that overlap the tile ``[x0, x0 + size) x [y0, y0 + size)``
    by at least ``min_side`` pixels in both directions, clipped to it and shifted to its
    coordinates, and for each whether it is *cut*: less than ``min_kept`` of its area lies
    inside the tile (such a box is best kept as an ignore region: neither a target to learn nor
    a miss to count).
    """
    kept, cut = [], []
    for x1, y1, x2, y2 in boxes:
        cx1, cy1 = max(x1, x0), max(y1, y0)
        cx2, cy2 = min(x2, x0 + size), min(y2, y0 + size)
        if cx2 - cx1 < min_side or cy2 - cy1 < min_side:
            continue
        area = (x2 - x1) * (y2 - y1)
        inside = (cx2 - cx1) * (cy2 - cy1)
        kept.append([cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0])
        cut.append(area <= 0 or inside < min_kept * area)
    return kept, cut
