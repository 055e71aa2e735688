"""`Tiler`: cut images into overlapping tiles, and stitch tiles (or per-tile maps) back into images.

Reference: ``anomalib.data.utils.tiler`` (``Tiler.tile`` / ``Tiler.untile``); the motivation is
Rolih et al., "Divide and conquer: high-resolution industrial anomaly detection via memory efficient
tiled ensemble" (CVPR-W 2024), Sec. 3.1: a detector built for 256-px inputs sees a 1,024-px image
either resized (a defect a few pixels wide shrinks below one pixel and is lost) or in tiles at full
resolution (each tile is an ordinary 256-px input).

Geometry, per axis (height and width alike). A tile of size ``t`` moves by ``stride`` ``s`` ≤ ``t``;
its top-left corners along an axis of length ``L`` are

    0, s, 2s, ..., L − t          (n = (L − t) / s + 1 tiles)

which covers the axis exactly when ``(L − t)`` is a multiple of ``s`` and ``t ≤ L``. Otherwise:

- ``padding="none"`` (the default): a clear error that names the sizes that would fit;
- ``padding="constant" | "reflect" | "replicate"``: the image is padded at the bottom and the right to
  the next length that fits, ``L' = t + ⌈(L − t)/s⌉·s`` (or ``t`` when ``L < t``); `untile` crops
  the padding off again.

**Stitching** (`untile`) averages: every output pixel is the mean of the values that the tiles covering
it hold there (1 tile away from overlaps, up to ⌈t/s⌉² in the middle of a dense grid). A tile that
leaves a pixel uncovered cannot happen (``s ≤ t`` is checked), so the mean is always defined.

Order of tiles: image by image, then row by row over the grid, left to right — tile ``k`` of image
``b`` is row ``b·N + k`` of what `tile` returns (``N`` = `n_tiles`).

Differences from the reference: the padding goes to the bottom/right only (so cropping back is a
slice), a grid that leaves a gap (``stride > tile_size``) is refused at construction rather than
producing uncovered pixels, and there is no "interpolation" mode (resizing the image to fit is what
tiling is meant to avoid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDING_MODES = ("none", "constant", "reflect", "replicate")


def _pair(value, name: str) -> tuple[int, int]:
    """``256`` or ``(256, 192)`` -> ``(height, width)`` of positive ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


class Tiler:
    """Split ``(B, C, H, W)`` images into ``(B·N, C, th, tw)`` tiles and stitch them back.

    Args:
        tile_size: a tile's side (int) or ``(height, width)``.
        stride: how far the next tile starts (default: ``tile_size``, tiles side by side); at most
            ``tile_size``, so that no pixel is left out. A smaller stride makes the tiles overlap.
        padding: ``"none"`` — the grid must cover the image exactly (else a `ValueError` naming the
            sizes that fit); ``"constant"`` (zeros), ``"reflect"`` or ``"replicate"`` — pad the bottom
            and right of the image to the next size the grid covers.
    """

    def __init__(self, tile_size, stride=None, padding: str = "none"):
        self.tile_size = _pair(tile_size, "tile_size")
        self.stride = self.tile_size if stride is None else _pair(stride, "stride")
        for axis, tile, step in zip(("height", "width"), self.tile_size, self.stride):
            if step > tile:
                raise ValueError(
                    f"stride {step} is larger than the tile's {axis} {tile}: the gaps between tiles would be "
                    f"covered by no tile; use stride <= tile_size (stride == tile_size: tiles side by side)"
                )
        if padding not in PADDING_MODES:
            raise ValueError(f"padding={padding!r} is not a padding mode; use one of {', '.join(PADDING_MODES)}")
        self.padding = padding

    def __repr__(self) -> str:
        return f"Tiler(tile_size={self.tile_size}, stride={self.stride}, padding={self.padding!r})"

    # ------------------------------------------------------------------------------------ the grid
    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the grid covers: ``(height, width)`` itself, or the next size that fits (padding)."""
        size = []
        for axis, length, tile, step in zip(("height", "width"), (height, width), self.tile_size, self.stride):
            fits = length >= tile and (length - tile) % step == 0
            if fits:
                size.append(length)
            elif self.padding == "none":
                raise ValueError(self._no_fit_message(axis, length, tile, step))
            else:
                size.append(tile + math.ceil(max(length - tile, 0) / step) * step)
        return size[0], size[1]

    def _no_fit_message(self, axis: str, length: int, tile: int, step: int) -> str:
        if length < tile:
            return (
                f"the image's {axis} {length} is smaller than the tile ({tile}): use a smaller tile_size, or "
                f"padding='constant'|'reflect'|'replicate' to pad the image up to one tile"
            )
        below = tile + (length - tile) // step * step
        return (
            f"tiles of {tile} px every {step} px do not cover the image's {axis} {length}: the last tile ends at "
            f"{below}, leaving {length - below} px. Use an image {axis} of {below} or {below + step}, a stride that "
            f"divides {length - tile}, or padding='constant'|'reflect'|'replicate' to pad the image to {below + step}"
        )

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners ``(top, left)`` of the tiles, row by row, in the (padded) image."""
        padded_height, padded_width = self.padded_size(height, width)
        tops = range(0, padded_height - self.tile_size[0] + 1, self.stride[0])
        lefts = range(0, padded_width - self.tile_size[1] + 1, self.stride[1])
        return [(top, left) for top in tops for left in lefts]

    def n_tiles(self, height: int, width: int) -> int:
        """N: how many tiles one ``height × width`` image is cut into."""
        return len(self.positions(height, width))

    # ------------------------------------------------------------------------------------ image -> tiles
    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H', W'): padded at the bottom and right to the size the grid covers."""
        height, width = images.shape[-2:]
        padded_height, padded_width = self.padded_size(height, width)
        extra_h, extra_w = padded_height - height, padded_width - width
        if extra_h == 0 and extra_w == 0:
            return images
        if self.padding == "reflect" and (extra_h >= height or extra_w >= width):
            raise ValueError(
                f"reflect padding adds ({extra_h}, {extra_w}) px to a {height}x{width} image, but reflecting can "
                "add at most one pixel less than the image's side; use padding='replicate' or 'constant'"
            )
        mode = "constant" if self.padding == "constant" else self.padding
        return F.pad(images, (0, extra_w, 0, extra_h), mode=mode)  # (left, right, top, bottom)

    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B·N, C, th, tw): tile k of image b is row b·N + k."""
        if images.ndim != 4:
            raise ValueError(f"Tiler.tile expects images (B, C, H, W), got shape {tuple(images.shape)}")
        padded = self.pad(images)  # (B, C, H', W')
        th, tw = self.tile_size
        corners = self.positions(*images.shape[-2:])
        tiles = torch.stack([padded[:, :, top : top + th, left : left + tw] for top, left in corners], dim=1)
        return tiles.reshape(-1, images.shape[1], th, tw)  # (B, N, C, th, tw) -> (B·N, C, th, tw)

    # ------------------------------------------------------------------------------------ tiles -> image
    def untile(self, tiles: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Stitch tiles back into images of ``image_size = (H, W)``, averaging where tiles overlap.

        (B·N, C, th, tw) -> (B, C, H, W), or per-tile maps (B·N, th, tw) -> (B, H, W)."""
        given = tuple(tiles.shape)
        maps = tiles.ndim == 3
        if maps:
            tiles = tiles[:, None]  # (B·N, 1, th, tw)
        if tiles.ndim != 4 or tuple(tiles.shape[-2:]) != self.tile_size:
            raise ValueError(
                f"Tiler.untile expects tiles (B·N, C, {self.tile_size[0]}, {self.tile_size[1]}) or maps "
                f"(B·N, {self.tile_size[0]}, {self.tile_size[1]}), got shape {given}"
            )
        height, width = image_size
        corners = self.positions(height, width)
        n = len(corners)
        if tiles.shape[0] % n:
            raise ValueError(
                f"{tiles.shape[0]} tiles are not a whole number of images: a {height}x{width} image has {n} tiles"
            )
        batch, channels = tiles.shape[0] // n, tiles.shape[1]
        tiles = tiles.reshape(batch, n, channels, *self.tile_size)  # (B, N, C, th, tw)
        padded_height, padded_width = self.padded_size(height, width)
        total = tiles.new_zeros(batch, channels, padded_height, padded_width)  # sum of the tiles' values
        count = tiles.new_zeros(1, 1, padded_height, padded_width)  # how many tiles cover each pixel
        th, tw = self.tile_size
        for k, (top, left) in enumerate(corners):
            total[:, :, top : top + th, left : left + tw] += tiles[:, k]
            count[:, :, top : top + th, left : left + tw] += 1
        stitched = (total / count)[:, :, :height, :width]  # the mean, padding cropped off: (B, C, H, W)
        return stitched[:, 0] if maps else stitched


__all__ = ["PADDING_MODES", "Tiler"]
