"""`adlearn.components.Tiler`: exhaustive round trips, brute-force overlap averaging, clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from adlearn.components import Tiler
from adlearn.components.tiler import PADDING_MODES


def covering_combinations(max_side: int = 7):
    """Every (image side, tile, stride) with stride <= tile whose grid covers the side exactly."""
    for side, tile in itertools.product(range(1, max_side + 1), repeat=2):
        for stride in range(1, tile + 1):
            if tile <= side and (side - tile) % stride == 0:
                yield side, tile, stride


def brute_force_positions(side: int, tile: int, stride: int) -> list[int]:
    """Corners along one axis found by walking: start at 0, step by stride while the tile still fits."""
    corners, corner = [], 0
    while corner + tile <= side:
        corners.append(corner)
        corner += stride
    return corners


def test_round_trip_is_exact_for_every_covering_size_tile_and_stride():
    """tile then untile gives the image back, bit for bit (integer values: sums and means are exact)."""
    generator = torch.Generator().manual_seed(0)
    combinations = list(covering_combinations())
    assert len(combinations) == 57  # (side, tile, stride) triples up to 7 px; not empty by mistake
    for (height, tile_h, stride_h), (width, tile_w, stride_w) in itertools.product(combinations, repeat=2):
        tiler = Tiler((tile_h, tile_w), (stride_h, stride_w))
        images = torch.randint(0, 256, (2, 3, height, width), generator=generator).float()
        tiles = tiler.tile(images)
        n = len(brute_force_positions(height, tile_h, stride_h)) * len(brute_force_positions(width, tile_w, stride_w))
        assert tiles.shape == (2 * n, 3, tile_h, tile_w) and tiler.n_tiles(height, width) == n
        assert torch.equal(tiler.untile(tiles, (height, width)), images)
        assert torch.equal(tiler.untile(tiles[:, 0], (height, width)), images[:, 0])  # maps (B·N, th, tw)


def test_round_trip_with_real_valued_images_and_every_padding_mode():
    images = torch.rand(2, 3, 13, 10, generator=torch.Generator().manual_seed(1))
    for mode in PADDING_MODES[1:]:
        for tile, stride in [(4, 3), (5, 2), (6, 6), (16, 4)]:
            tiler = Tiler(tile, stride, padding=mode)
            torch.testing.assert_close(tiler.untile(tiler.tile(images), (13, 10)), images, rtol=0, atol=1e-6)


def test_tiles_hold_the_pixels_at_their_corners_in_row_major_order():
    images = torch.arange(2 * 1 * 6 * 8).float().reshape(2, 1, 6, 8)
    tiler = Tiler((4, 4), (2, 2))
    corners = tiler.positions(6, 8)
    assert corners == [(top, left) for top in (0, 2) for left in (0, 2, 4)]
    tiles = tiler.tile(images)
    for b, (k, (top, left)) in itertools.product(range(2), enumerate(corners)):
        assert torch.equal(tiles[b * len(corners) + k], images[b, :, top : top + 4, left : left + 4])


def test_overlaps_are_averaged_like_a_pixel_by_pixel_brute_force():
    """Stitch tiles whose values differ (as per-tile anomaly maps do): each pixel is the plain mean of
    the values every tile covering it holds there, computed with explicit loops."""
    generator = torch.Generator().manual_seed(2)
    for (height, width), tile, stride in [((7, 9), (3, 3), (2, 3)), ((8, 8), (4, 4), (1, 2)), ((5, 6), (5, 2), (1, 1))]:
        tiler = Tiler(tile, stride)
        corners = tiler.positions(height, width)
        maps = torch.rand(2 * len(corners), *tile, generator=generator, dtype=torch.float64)
        stitched = tiler.untile(maps, (height, width))
        expected = torch.zeros(2, height, width, dtype=torch.float64)
        for b, y, x in itertools.product(range(2), range(height), range(width)):
            values = [
                maps[b * len(corners) + k, y - top, x - left]
                for k, (top, left) in enumerate(corners)
                if top <= y < top + tile[0] and left <= x < left + tile[1]
            ]
            assert values, "every pixel is covered"
            expected[b, y, x] = sum(values) / len(values)
        torch.testing.assert_close(stitched, expected, rtol=0, atol=1e-12)


def test_padding_pads_bottom_right_to_the_next_covering_size_with_the_mode():
    image = torch.arange(1, 6).float().reshape(1, 1, 1, 5).expand(1, 1, 5, 5).contiguous()  # rows 1..5
    assert Tiler(3, 2, padding="constant").padded_size(5, 6) == (5, 7)
    assert Tiler(8, 4, padding="replicate").padded_size(5, 6) == (8, 8)  # smaller than one tile: one tile
    padded = Tiler(4, 3, padding="reflect").pad(image)  # 5 -> 7: two columns reflected
    assert padded.shape == (1, 1, 7, 7) and padded[0, 0, 0].tolist() == [1, 2, 3, 4, 5, 4, 3]
    assert Tiler(4, 3, padding="replicate").pad(image)[0, 0, 0].tolist() == [1, 2, 3, 4, 5, 5, 5]
    assert Tiler(4, 3, padding="constant").pad(image)[0, 0, 0].tolist() == [1, 2, 3, 4, 5, 0, 0]


def test_a_grid_that_does_not_cover_the_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tiles of 4 px every 3 px do not cover the image's height 9.*padding="):
        Tiler(4, 3).tile(torch.zeros(1, 3, 9, 10))
    with pytest.raises(ValueError, match=r"an image height of 7 or 10, a stride that divides 5"):
        Tiler(4, 3).positions(9, 10)
    with pytest.raises(ValueError, match=r"width 3 is smaller than the tile \(4\)"):
        Tiler(4).tile(torch.zeros(1, 3, 4, 3))
    with pytest.raises(ValueError, match=r"stride 5 is larger than the tile's width 4.*stride <= tile_size"):
        Tiler((4, 4), (4, 5))
    with pytest.raises(ValueError, match=r"padding='mirror' is not a padding mode; use one of none, constant"):
        Tiler(4, padding="mirror")
    with pytest.raises(ValueError, match=r"reflect padding adds \(12, 12\) px to a 4x4 image.*'replicate'"):
        Tiler(16, 4, padding="reflect").tile(torch.zeros(1, 3, 4, 4))
    for bad in (0, -2, 2.5, True, (3,), "4"):
        with pytest.raises(ValueError, match="tile_size must be"):
            Tiler(bad)


def test_untile_checks_the_tiles_it_is_given():
    tiler = Tiler(4, 2)
    with pytest.raises(
        ValueError, match=r"expects tiles \(B·N, C, 4, 4\) or maps \(B·N, 4, 4\), got shape \(9, 3, 3\)"
    ):
        tiler.untile(torch.zeros(9, 3, 3), (8, 8))
    with pytest.raises(ValueError, match=r"10 tiles are not a whole number of images: a 8x8 image has 9 tiles"):
        tiler.untile(torch.zeros(10, 4, 4), (8, 8))
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\)"):
        tiler.tile(torch.zeros(3, 8, 8))
