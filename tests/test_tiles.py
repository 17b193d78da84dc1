"""Tiling large annotated images: tile offsets and the boxes of a tile, worked by hand."""

import pytest

from atss_d2.data.tiles import tile_boxes, tile_origins


def test_tile_origins():
    assert tile_origins(1000, 400) == [0, 400, 600]  # the last tile ends at the border
    assert tile_origins(800, 400) == [0, 400]
    assert tile_origins(300, 400) == [0]
    with pytest.raises(ValueError, match="positive"):
        tile_origins(100, 0)


def test_tile_boxes_clip_shift_and_mark_cut_boxes():
    boxes = [
        (10, 10, 50, 50),  # inside the tile at (0, 0)
        (380, 100, 420, 140),  # half inside (20 of 40 px): not cut (>= 0.5 kept)
        (390, 200, 430, 240),  # a quarter inside: cut
        (399, 300, 440, 340),  # 1 px inside: dropped (< 2 px)
        (500, 500, 520, 520),  # outside
    ]
    kept, cut = tile_boxes(boxes, 0, 0, 400)
    assert kept == [[10, 10, 50, 50], [380, 100, 400, 140], [390, 200, 400, 240]]
    assert cut == [False, False, True]
    # The tile at (400, 0): the same boxes from the other side, in its own coordinates.
    kept, cut = tile_boxes(boxes, 400, 0, 400)
    assert kept == [[0, 100, 20, 140], [0, 200, 30, 240], [0, 300, 40, 340]]
    assert cut == [False, False, False]
