"""Perlin noise: smooth random "clouds", the raw material of synthetic anomalies
(reference: ``anomalib.data.utils.generators.perlin``).

How 2-D Perlin noise works, in four steps:

1. Lay a coarse lattice of ``(res_y + 1) x (res_x + 1)`` points over the image and give each point
   a random unit *gradient* vector.
2. For every pixel, find the lattice cell it falls in and its offset ``(fy, fx)`` in [0, 1)
   inside that cell.
3. For each of the cell's four corners, take the dot product of the corner's gradient with the
   vector from that corner to the pixel. Near a corner the value is ~0 and it grows along the
   gradient, which is what gives Perlin noise its blobby look.
4. Blend the four values with a *fade* curve (default ``6t^5 - 15t^4 + 10t^3``) so that the noise
   and its first two derivatives are continuous across cell borders.

The raw result lies in ``[-sqrt(2)/2, sqrt(2)/2]``; we scale it by ``sqrt(2)`` so it spans
[-1, 1]. ``res`` sets the scale: ``res=(4, 4)`` gives about four blobs across the image.

`perlin_at` evaluates the noise at arbitrary (e.g. rotated) coordinates, which is how
`PerlinAnomalyGenerator` rotates its masks without any image interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from adlearn.data.errors import DataError

RNGLike = np.random.Generator | int | None
Fade = Callable[[np.ndarray], np.ndarray]


def fade_quintic(t: np.ndarray) -> np.ndarray:
    """Ken Perlin's improved fade curve ``6t^5 - 15t^4 + 10t^3``: flat at 0 and 1."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def as_rng(rng: RNGLike) -> np.random.Generator:
    """Accept a numpy Generator, an int seed, or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or min(int(v) for v in pair) < 1:
        raise DataError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def random_gradients(res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random unit gradient vectors on the lattice: shape ``(res_y + 1, res_x + 1, 2)``."""
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(res[0] + 1, res[1] + 1))
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (..., 2) as (gy, gx)


def perlin_at(
    gradients: np.ndarray, y: np.ndarray, x: np.ndarray, fade: Fade = fade_quintic, outside: float = 0.0
) -> np.ndarray:
    """Perlin noise at lattice coordinates ``(y, x)`` (arrays of any equal shape), in [-1, 1].

    Coordinates are in lattice units: ``y`` in ``[0, res_y]``. Points outside the lattice get
    ``outside`` (like the constant fill of a rotated image).
    """
    res_y, res_x = gradients.shape[0] - 1, gradients.shape[1] - 1
    inside = (y >= 0) & (y <= res_y) & (x >= 0) & (x <= res_x)
    yc, xc = np.clip(y, 0, res_y), np.clip(x, 0, res_x)
    # cell index of each point; the last lattice line belongs to the cell before it
    iy = np.minimum(np.floor(yc).astype(np.int64), res_y - 1)
    ix = np.minimum(np.floor(xc).astype(np.int64), res_x - 1)
    fy, fx = yc - iy, xc - ix  # offsets inside the cell, in [0, 1]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[iy + dy, ix + dx]  # (..., 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)  # dot(gradient, offset)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    noise = math.sqrt(2.0) * (top * (1 - v) + bottom * v)
    return np.where(inside, np.clip(noise, -1.0, 1.0), outside)


def random_2d_perlin(
    shape: int | tuple[int, int], res: int | tuple[int, int], fade: Fade = fade_quintic, rng: RNGLike = None
) -> np.ndarray:
    """A ``shape``-sized float32 array of 2-D Perlin noise in [-1, 1] with ``res`` cells per axis.

    When ``shape`` is not a multiple of ``res``, the noise is made on the next multiple and
    cropped, so every lattice cell covers a whole number of pixels (as in the reference).
    """
    height, width = _as_pair(shape, "shape")
    res_y, res_x = _as_pair(res, "res")
    rng = as_rng(rng)
    full_h = math.ceil(height / res_y) * res_y  # next multiple of res
    full_w = math.ceil(width / res_x) * res_x
    gradients = random_gradients((res_y, res_x), rng).astype(np.float32)
    # On a regular grid the cell index and offset of a pixel depend on its row (or column) only,
    # so they are 1-D; only the four corner gradients need full (H, W) arrays. Same maths as
    # `perlin_at`, several times faster.
    y = np.arange(height, dtype=np.float64) * (res_y / full_h)  # (H,) lattice coordinates
    x = np.arange(width, dtype=np.float64) * (res_x / full_w)  # (W,)
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy = (y - iy).astype(np.float32)[:, None]  # (H, 1)
    fx = (x - ix).astype(np.float32)[None, :]  # (1, W)

    def corner(dy: int, dx: int) -> np.ndarray:
        gy = gradients[iy + dy, :, 0][:, ix + dx]  # (H, W) gradient components at this corner
        gx = gradients[iy + dy, :, 1][:, ix + dx]
        return gy * (fy - dy) + gx * (fx - dx)

    u, v = fade(fx), fade(fy)  # (1, W), (H, 1)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    noise = np.float32(math.sqrt(2.0)) * (top * (1 - v) + bottom * v)
    return np.clip(noise, -1.0, 1.0).astype(np.float32)  # (H, W)


def fractal_perlin(
    shape: int | tuple[int, int],
    res: int | tuple[int, int],
    octaves: int = 4,
    persistence: float = 0.5,
    rng: RNGLike = None,
) -> np.ndarray:
    """Sum of Perlin octaves (each twice as fine, ``persistence`` times as strong), in [-1, 1]."""
    rng = as_rng(rng)
    res_y, res_x = _as_pair(res, "res")
    total = np.zeros(_as_pair(shape, "shape"), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        scale = 2**octave
        total += amplitude * random_2d_perlin(shape, (res_y * scale, res_x * scale), rng=rng)
        norm += amplitude
        amplitude *= persistence
    return total / norm
