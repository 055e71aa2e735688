"""An embedded, deterministic anomaly-detection dataset in the MVTec AD layout.

Real benchmarks are large downloads; this module *draws* a small one in a few seconds, so every
notebook and test has data at hand. Four categories mimic MVTec's two families:

=========  ========  ===============================================================
category   kind      defect types (folder names under ``test/``)
=========  ========  ===============================================================
weave      texture   color (colour change), hole (missing part), stain, thread (extra part)
marble     texture   crack, scratch, stain
pill       object    color (colour change), crack, spot
ring       object    crack, missing (missing part), scratch
=========  ========  ===============================================================

Normal images vary the way real ones do: textures shift their phase, orientation and thread
count; objects move, rotate and see the light from slightly different angles; every image gets
a little sensor noise. So a detector has to learn what "normal" looks like, not memorise one
picture; ImageNet features handle it, a pixel-wise difference does not.

**Exact masks.** Each sample is drawn *twice* from the same random numbers, once clean and once
with its defect, at the final image size (there is no resize afterwards). The mask is exactly the
set of pixels whose 8-bit colour differs between the two. `render_sample` exposes both drawings,
so a test can check this from the outside.

**Determinism.** Sample ``i`` of a folder depends only on ``(seed, category, split, defect, i)``:
the same arguments give byte-identical PNG files, and asking for more images adds new ones
without changing the first ones.

Drawing works in *normalized* coordinates (the image is the unit square), so a category looks
the same at 64 px and at 512 px, only sharper.

**Fine defects** (``defects="fine"``). The standard defects scale with the image. The fine kind
draws, on the same scenes, defects a few *pixels* wide at any resolution — a hairline crack, a thin
scratch, tiny specks (``fine_crack``, ``fine_scratch``, ``fine_spot``; the same three for every
category). At 1,024 px they are clear; resized to 256 px they shrink below a pixel and fade into
the texture. They are what high-resolution inspection by tiles is for (`adlearn.components.Tiler`).
``synthetic_root(image_size=1024, defects="fine", categories="marble")`` caches such a set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from adlearn.cache import cache_dir
from adlearn.data.errors import DataError
from adlearn.data.perlin import fractal_perlin, random_2d_perlin

#: Bump when the drawings change, so cached copies are regenerated.
GENERATOR_VERSION = 2

DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "weave": ("color", "hole", "stain", "thread"),
    "marble": ("crack", "scratch", "stain"),
    "pill": ("color", "crack", "spot"),
    "ring": ("crack", "missing", "scratch"),
}
#: The fine kind's defect types, the same for every category (drawn in pixel units, see the module's docstring).
FINE_DEFECT_TYPES: tuple[str, ...] = ("fine_crack", "fine_scratch", "fine_spot")
DEFECT_KINDS: tuple[str, ...] = ("standard", "fine")
CATEGORY_KIND: dict[str, str] = {"weave": "texture", "marble": "texture", "pill": "object", "ring": "object"}
SYNTHETIC_CATEGORIES: tuple[str, ...] = tuple(DEFECT_TYPES)

MARKER_NAME = ".adlearn_synthetic.json"  # inside each category folder we wrote
COMPLETE_NAME = ".adlearn_complete.json"  # at the root of a cached copy, written last
SENSOR_NOISE = 0.008  # standard deviation of the per-pixel noise, in [0, 1] units


# =========================================================================== geometry helpers
@dataclass(frozen=True)
class Canvas:
    """Pixel-centre coordinates of a square image, in [0, 1]; ``px`` is one pixel's width."""

    size: int
    yy: np.ndarray  # (H, W)
    xx: np.ndarray  # (H, W)

    @property
    def px(self) -> float:
        return 1.0 / self.size


@lru_cache(maxsize=8)
def make_canvas(size: int) -> Canvas:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    yy.flags.writeable = False  # shared through the cache: never modify in place
    xx.flags.writeable = False
    return Canvas(size, yy, xx)


def coverage(sdf: np.ndarray, px: float, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-ness of a signed distance (negative inside): 1 inside, 0 outside,
    a linear ramp about one pixel wide across the edge."""
    return np.clip(0.5 - sdf / (px * softness), 0.0, 1.0).astype(np.float32)


def blob_sdf(
    c: Canvas, cy: float, cx: float, radius: float, rng: np.random.Generator, wobble: float = 0.3
) -> np.ndarray:
    """Approximate signed distance to an irregular blob: a circle with a wobbling radius."""
    dy, dx = c.yy - cy, c.xx - cx
    theta = np.arctan2(dy, dx)
    harmonics = range(2, 6)
    amplitudes = [float(a) / math.sqrt(n - 1) for a, n in zip(rng.uniform(0, wobble, size=4), harmonics)]
    phases = [float(p) for p in rng.uniform(0, 2 * math.pi, size=4)]
    wobbly = 1 + sum(a * np.cos(n * theta + p) for a, n, p in zip(amplitudes, harmonics, phases))
    return np.hypot(dy, dx) - radius * np.maximum(wobbly, 0.3)


def polyline_sdf(c: Canvas, points: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Signed distance to a thick polyline whose half-width is given per point (tapered lines).

    ``points`` is ``(K, 2)`` as (y, x). Only the bounding box of the line is computed; elsewhere
    the distance is a large positive number (far outside).
    """
    far = np.ones((c.size, c.size), dtype=np.float32)
    pad = float(half_widths.max()) + 3 * c.px
    (y_min, x_min), (y_max, x_max) = points.min(axis=0) - pad, points.max(axis=0) + pad
    r0, r1 = max(0, int(y_min * c.size)), min(c.size, int(math.ceil(y_max * c.size)) + 1)
    c0, c1 = max(0, int(x_min * c.size)), min(c.size, int(math.ceil(x_max * c.size)) + 1)
    if r0 >= r1 or c0 >= c1:
        return far
    py, px = c.yy[r0:r1, c0:c1], c.xx[r0:r1, c0:c1]
    best = np.full(py.shape, np.inf, dtype=np.float32)
    points, widths = points.tolist(), half_widths.tolist()  # Python floats keep maths float32
    for (ay, ax), (by, bx), wa, wb in zip(points[:-1], points[1:], widths[:-1], widths[1:]):
        ey, ex = by - ay, bx - ax
        t = np.clip(((py - ay) * ey + (px - ax) * ex) / max(ey * ey + ex * ex, 1e-12), 0, 1)
        distance = np.hypot(py - (ay + t * ey), px - (ax + t * ex))
        best = np.minimum(best, distance - (wa + t * (wb - wa)))
    far[r0:r1, c0:c1] = best
    return far


def random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length: float,
    steps: int = 14,
    wiggle: float = 0.35,
) -> np.ndarray:
    """A jagged path (cracks): equal steps whose direction drifts randomly; ``(steps + 1, 2)``."""
    points = [np.asarray(start, dtype=np.float64)]
    for _ in range(steps):
        angle += rng.normal(0, wiggle)
        points.append(points[-1] + (length / steps) * np.array([math.sin(angle), math.cos(angle)]))
    return np.stack(points)


def bent_line(
    rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, bend: float, n: int = 20
) -> np.ndarray:
    """A smooth curve (scratches, loose threads): a quadratic Bézier bent sideways by ``bend``."""
    p0 = np.asarray(start, dtype=np.float64)
    direction = np.array([math.sin(angle), math.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    p2 = p0 + length * direction
    p1 = (p0 + p2) / 2 + bend * length * normal
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def taper(n: int, wide: float, narrow: float) -> np.ndarray:
    """Half-widths along a line: ``wide`` in the middle, ``narrow`` at both ends."""
    t = np.linspace(-1, 1, n)
    return (narrow + (wide - narrow) * (1 - t**2)).astype(np.float64)


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)


def blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image`` where alpha is 0, ``colour`` (a colour or an image) where alpha is 1."""
    a = alpha[..., None]
    return image * (1 - a) + colour * a


def lighting(c: Canvas, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """A global gain times a gentle linear gradient: the light differs a little between shots."""
    gain = rng.uniform(0.94, 1.06)
    direction = rng.uniform(0, 2 * math.pi)
    slope = rng.uniform(0, strength)
    ramp = (c.xx - 0.5) * math.cos(direction) + (c.yy - 0.5) * math.sin(direction)
    return (gain * (1 + slope * ramp)).astype(np.float32)  # (H, W)


# =========================================================================== scenes
@dataclass
class Scene:
    """A clean drawing (float RGB in [0, 1], before noise) plus what defects need to know."""

    image: np.ndarray  # (H, W, 3)
    support: np.ndarray  # (H, W) in [0, 1]: where a defect may change pixels (the object)
    info: dict


def jitter_colour(rng: np.random.Generator, colour: Iterable[float], amount: float = 0.03):
    return (np.asarray(colour, dtype=np.float32) * rng.uniform(1 - amount, 1 + amount, size=3)).astype(np.float32)


def texture_point(rng: np.random.Generator) -> tuple[float, float]:
    """A defect position on a texture, away from the border."""
    return float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))


# ----------------------------------------------------------------- weave (woven fabric)
def draw_weave(c: Canvas, rng: np.random.Generator) -> Scene:
    angle = math.radians(rng.uniform(-3, 3))
    period = 1.0 / rng.uniform(16, 20)  # thread spacing: 16-20 threads across the image
    phase_u, phase_v = (float(p) for p in rng.uniform(0, 2, size=2))
    u = ((c.xx - 0.5) * math.cos(angle) + (c.yy - 0.5) * math.sin(angle)) / period + phase_u
    v = (-(c.xx - 0.5) * math.sin(angle) + (c.yy - 0.5) * math.cos(angle)) / period + phase_v
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i, v - j  # position inside one over/under cell
    warp_on_top = (i + j) % 2 == 0  # plain weave: warp and weft alternate
    # a thread is round (bright centre, dark gaps) and dips where it passes under the other one
    warp = np.sqrt(np.sin(math.pi * fu)) * (0.8 + 0.2 * np.sin(math.pi * fv))
    weft = np.sqrt(np.sin(math.pi * fv)) * (0.8 + 0.2 * np.sin(math.pi * fu))
    shade = np.where(warp_on_top, warp, weft)
    # yarn irregularity: every thread is a little brighter or darker than its neighbours
    warp_var = rng.normal(0, 0.04, size=64).astype(np.float32)
    weft_var = rng.normal(0, 0.04, size=64).astype(np.float32)
    variation = np.where(warp_on_top, warp_var[i % 64], weft_var[j % 64])
    warp_colour = jitter_colour(rng, (0.80, 0.70, 0.52))
    weft_colour = jitter_colour(rng, (0.71, 0.61, 0.46))
    colour = np.where(warp_on_top[..., None], warp_colour, weft_colour)
    light = lighting(c, rng) * (1 + 0.05 * random_2d_perlin(c.size, 2, rng=rng))
    brightness = (0.35 + 0.65 * shade) * (1 + variation) * light
    image = colour * brightness[..., None].astype(np.float32)
    return Scene(image.astype(np.float32), np.ones((c.size, c.size), np.float32), {"period": period})


def weave_hole(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Missing part: threads torn out, the dark backing shows through a frayed hole."""
    cy, cx = texture_point(rng)
    alpha = coverage(blob_sdf(c, cy, cx, rng.uniform(0.035, 0.06), rng, wobble=0.35), c.px)
    backing = np.array([0.10, 0.09, 0.08], np.float32)
    backing = backing * (1 + 0.3 * random_2d_perlin(c.size, 16, rng=rng))[..., None]
    return blend(s.image, backing, alpha)


def weave_stain(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Stain: a translucent brown blot darkening the threads underneath."""
    cy, cx = texture_point(rng)
    alpha = coverage(blob_sdf(c, cy, cx, rng.uniform(0.05, 0.09), rng), c.px)
    alpha = alpha * rng.uniform(0.45, 0.65)
    tint = jitter_colour(rng, (0.50, 0.36, 0.22), 0.1)
    return blend(s.image, s.image * tint, alpha)


def weave_thread(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Extra part: a loose dark fibre lying across the fabric."""
    half_width = 0.3 * s.info["period"]
    points = bent_line(
        rng, texture_point(rng), rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.45), rng.uniform(-0.3, 0.3)
    )
    sdf = polyline_sdf(c, points, np.full(len(points), half_width))
    alpha = coverage(sdf, c.px)
    # rounded fibre: bright along its middle, darker towards its edges
    profile = np.sqrt(np.clip(1 - (1 + sdf / half_width) ** 2, 0, 1))
    colour = jitter_colour(rng, (0.30, 0.22, 0.16), 0.1)
    fibre = colour * (0.5 + 0.5 * profile)[..., None]
    return blend(s.image, fibre, alpha)


def recolour(c: Canvas, s: Scene, rng: np.random.Generator, cy: float, cx: float, radius: float) -> np.ndarray:
    """Colour change: inside a blob, keep the shading but swap the hue."""
    alpha = coverage(blob_sdf(c, cy, cx, radius, rng), c.px) * s.support
    alpha = alpha * rng.uniform(0.6, 0.85)
    palette = np.array([[0.95, 0.35, 0.30], [0.35, 0.50, 0.95], [0.40, 0.80, 0.35], [0.95, 0.85, 0.30]], np.float32)
    tint = palette[int(rng.integers(len(palette)))]
    shaded = luminance(s.image)[..., None] * tint * 1.4
    return blend(s.image, np.clip(shaded, 0, 1), alpha)


def weave_color(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    cy, cx = texture_point(rng)
    return recolour(c, s, rng, cy, cx, rng.uniform(0.05, 0.09))


# ----------------------------------------------------------------- marble (veined stone)
def draw_marble(c: Canvas, rng: np.random.Generator) -> Scene:
    angle = rng.uniform(0, math.pi)  # veins may run in any direction
    frequency = rng.uniform(2.0, 3.5)  # vein bands across the image
    turbulence = fractal_perlin(c.size, 3, octaves=4, rng=rng)
    u = c.xx * math.cos(angle) + c.yy * math.sin(angle)
    wave = np.sin(2 * math.pi * (frequency * u + rng.uniform(0, 1)) + rng.uniform(1.5, 2.5) * math.pi * turbulence)
    veins = (1 - np.abs(wave)) ** rng.uniform(4, 8)  # thin where the wave crosses zero
    clouds = 0.04 * fractal_perlin(c.size, 4, octaves=2, rng=rng)
    grain = 0.015 * random_2d_perlin(c.size, 48, rng=rng)
    base = jitter_colour(rng, (0.80, 0.79, 0.76))
    vein_colour = jitter_colour(rng, (0.42, 0.44, 0.47))
    image = blend(np.broadcast_to(base, (c.size, c.size, 3)), vein_colour, (0.75 * veins).astype(np.float32))
    image = image * ((1 + clouds + grain) * lighting(c, rng))[..., None]
    return Scene(image.astype(np.float32), np.ones((c.size, c.size), np.float32), {})


def draw_crack(
    c: Canvas, s: Scene, rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, width: float
) -> np.ndarray:
    """A dark jagged line (with an occasional side branch), only on the support."""
    path = random_walk(rng, start, angle, length)
    sdf = polyline_sdf(c, path, taper(len(path), width, 0.3 * width))
    if rng.random() < 0.5:  # a branch leaving from the middle of the crack
        middle = len(path) // 2
        branch = random_walk(rng, tuple(path[middle]), angle + rng.choice([-1, 1]) * 0.8, 0.4 * length, steps=7)
        sdf = np.minimum(sdf, polyline_sdf(c, branch, taper(len(branch), 0.7 * width, 0.3 * width)))
    alpha = coverage(sdf, c.px) * s.support * 0.92
    return blend(s.image, jitter_colour(rng, (0.10, 0.09, 0.09), 0.1), alpha)


def draw_scratch(
    c: Canvas, s: Scene, rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, width: float
) -> np.ndarray:
    """A thin, nearly straight bright line (light caught by the scratch's walls)."""
    line = bent_line(rng, start, angle, length, rng.uniform(-0.08, 0.08))
    alpha = coverage(polyline_sdf(c, line, taper(len(line), width, 0.4 * width)), c.px)
    alpha = alpha * s.support * 0.9
    return blend(s.image, s.image + (1 - s.image) * 0.85, alpha)


def marble_crack(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    return draw_crack(c, s, rng, texture_point(rng), rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.45), 0.0045)


def marble_scratch(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    return draw_scratch(c, s, rng, texture_point(rng), rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.4), 0.0035)


def marble_stain(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """A yellow-brown soak mark, uneven inside."""
    cy, cx = texture_point(rng)
    alpha = coverage(blob_sdf(c, cy, cx, rng.uniform(0.05, 0.09), rng), c.px)
    alpha = alpha * rng.uniform(0.5, 0.75) * (0.75 + 0.25 * random_2d_perlin(c.size, 8, rng=rng))
    tint = jitter_colour(rng, (0.85, 0.62, 0.32), 0.05)
    return blend(s.image, s.image * tint, alpha)


# ----------------------------------------------------------------- pill (two-colour capsule)
def draw_pill(c: Canvas, rng: np.random.Generator) -> Scene:
    cy, cx = (0.5 + float(d) for d in rng.uniform(-0.03, 0.03, size=2))
    angle = math.radians(rng.uniform(-10, 10))
    half_length, radius = rng.uniform(0.25, 0.27), rng.uniform(0.15, 0.16)
    cos, sin = math.cos(angle), math.sin(angle)
    u = (c.xx - cx) * cos + (c.yy - cy) * sin  # along the pill
    v = -(c.xx - cx) * sin + (c.yy - cy) * cos  # across the pill
    du = np.maximum(np.abs(u) - half_length, 0)
    distance = np.hypot(du, v)  # distance to the pill's axis segment
    body = coverage(distance - radius, c.px)
    # shading: treat the pill as a tube with round ends; its normal tilts with the distance
    nu, nv = np.sign(u) * du / radius, v / radius
    nz = np.sqrt(np.clip(1 - nu**2 - nv**2, 0, 1))
    light = math.radians(225 + rng.uniform(-20, 20)) - angle  # light direction in pill frame
    lu, lv, lz = 0.55 * math.cos(light), 0.55 * math.sin(light), 0.83
    diffuse = np.clip(nu * lu + nv * lv + nz * lz, 0, 1)
    half_vector = np.clip(nu * lu / 2 + nv * lv / 2 + nz * (lz + 1) / 2, 0, 1)
    specular = 0.3 * (half_vector**5) ** 8  # a tight highlight (power 40)
    seam = rng.uniform(-0.01, 0.01)
    cap = np.where(
        (u < seam)[..., None], jitter_colour(rng, (0.93, 0.91, 0.86)), jitter_colour(rng, (0.80, 0.26, 0.18))
    )
    speckle = 1 + 0.02 * random_2d_perlin(c.size, 24, rng=rng)
    seam_line = 1 - 0.25 * coverage(np.abs(u - seam) - 0.003, c.px)
    pill = cap * ((0.3 + 0.7 * diffuse) * speckle * seam_line)[..., None] + specular[..., None]
    background = jitter_colour(rng, (0.78, 0.79, 0.80)) * lighting(c, rng)[..., None]
    # soft shadow: the same outline, shifted away from the light and blurred
    shift = 0.02
    su, sv = u + shift * math.cos(light), v + shift * math.sin(light)
    shadow = coverage(np.hypot(np.maximum(np.abs(su) - half_length, 0), sv) - radius, c.px, 12)
    background = background * (1 - 0.35 * shadow)[..., None]
    image = blend(background, pill, body)
    info = {"center": (cy, cx), "angle": angle, "half_length": half_length, "radius": radius}
    return Scene(image.astype(np.float32), body, info)


def pill_point(s: Scene, rng: np.random.Generator, spread: float = 0.6) -> tuple[float, float]:
    """A random point on the pill's visible face (not on its rim)."""
    info = s.info
    along = rng.uniform(-info["half_length"] - 0.3 * info["radius"], info["half_length"] + 0.3 * info["radius"])
    across = rng.uniform(-spread, spread) * info["radius"]
    cos, sin = math.cos(info["angle"]), math.sin(info["angle"])
    cy, cx = info["center"]
    return float(cy + along * sin + across * cos), float(cx + along * cos - across * sin)


def pill_spot(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Contamination: one to three dark specks."""
    alpha = np.zeros((c.size, c.size), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = pill_point(s, rng)
        alpha = np.maximum(alpha, coverage(blob_sdf(c, cy, cx, rng.uniform(0.012, 0.025), rng), c.px))
    alpha = alpha * s.support * rng.uniform(0.75, 0.95)
    return blend(s.image, jitter_colour(rng, (0.25, 0.18, 0.12), 0.1), alpha)


def pill_crack(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    across = s.info["angle"] + math.pi / 2 + rng.uniform(-0.7, 0.7) + rng.choice([0, math.pi])
    return draw_crack(c, s, rng, pill_point(s, rng, 0.3), across, rng.uniform(0.12, 0.22), 0.004)


def pill_color(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    cy, cx = pill_point(s, rng, 0.4)
    return recolour(c, s, rng, cy, cx, rng.uniform(0.04, 0.07))


# ----------------------------------------------------------------- ring (machined metal ring)
def draw_ring(c: Canvas, rng: np.random.Generator) -> Scene:
    cy, cx = (0.5 + float(d) for d in rng.uniform(-0.04, 0.04, size=2))
    outer = rng.uniform(0.32, 0.34)
    inner = outer * rng.uniform(0.50, 0.54)
    rotation = rng.uniform(0, 2 * math.pi)  # rings lie at any angle: the holes show it
    dy, dx = c.yy - cy, c.xx - cx
    r = np.hypot(dy, dx)
    middle = (inner + outer) / 2
    holes = np.full(r.shape, np.inf, np.float32)
    for k in range(3):  # three bolt holes, 120 degrees apart
        a = rotation + k * 2 * math.pi / 3
        holes = np.minimum(holes, np.hypot(dy - middle * math.sin(a), dx - middle * math.cos(a)) - 0.035)
    metal_sdf = np.maximum(np.maximum(r - outer, inner - r), -holes)
    metal = coverage(metal_sdf, c.px)
    light = math.radians(225 + rng.uniform(-20, 20))
    # cosine of the angle between "outwards from the centre" and "towards the light"
    facing = (dx * math.cos(light) + dy * math.sin(light)) / np.maximum(r, 1e-6)
    # brushed metal: brighter where the surface faces the light, bevelled edges catch it more
    bevel = 0.012
    rims = np.clip(1 - (outer - r) / bevel, 0, 1) - np.clip(1 - (r - inner) / bevel, 0, 1)
    brightness = 0.55 + (0.2 + 0.25 * rims) * facing
    period = max(0.012, 3 * c.px)  # concentric machining marks, never finer than 3 pixels
    brightness += 0.03 * np.sin(2 * math.pi * r / period)
    metal_colour = jitter_colour(rng, (0.80, 0.81, 0.84), 0.02)
    surface = metal_colour * (brightness * lighting(c, rng, 0.05))[..., None]
    background = jitter_colour(rng, (0.17, 0.18, 0.20), 0.05)
    background = background * (1 + 0.04 * fractal_perlin(c.size, 3, 2, rng=rng))[..., None]
    shift = 0.015
    sr = np.hypot(dy + shift * math.sin(light), dx + shift * math.cos(light))
    shadow = coverage(np.maximum(sr - outer, inner - sr), c.px, 10)
    background = background * (1 - 0.5 * shadow)[..., None]
    image = blend(background, surface, metal)
    info = {"center": (cy, cx), "inner": inner, "outer": outer, "background": background, "surface": surface}
    return Scene(image.astype(np.float32), metal, info)


def ring_point(s: Scene, rng: np.random.Generator, margin: float = 0.02):
    cy, cx = s.info["center"]
    radius = rng.uniform(s.info["inner"] + margin, s.info["outer"] - margin)
    angle = rng.uniform(0, 2 * math.pi)
    return float(cy + radius * math.sin(angle)), float(cx + radius * math.cos(angle)), angle


def ring_scratch(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    y, x, _ = ring_point(s, rng)
    return draw_scratch(c, s, rng, (y, x), rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.2), 0.004)


def ring_crack(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """A crack running outwards from the inner edge."""
    cy, cx = s.info["center"]
    angle = rng.uniform(0, 2 * math.pi)
    start = (cy + s.info["inner"] * math.sin(angle), cx + s.info["inner"] * math.cos(angle))
    length = (s.info["outer"] - s.info["inner"]) * rng.uniform(0.6, 1.0)
    return draw_crack(c, s, rng, start, angle, length, 0.005)


def ring_missing(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Missing part: a bite broken out of the outer rim; the background shows instead."""
    cy, cx = s.info["center"]
    angle = rng.uniform(0, 2 * math.pi)
    by, bx = cy + s.info["outer"] * math.sin(angle), cx + s.info["outer"] * math.cos(angle)
    bite = coverage(blob_sdf(c, by, bx, rng.uniform(0.045, 0.07), rng, wobble=0.4), c.px)
    metal = s.support * (1 - bite)
    return blend(s.info["background"], s.info["surface"], metal)


# ----------------------------------------------------------------- fine defects (a few pixels wide)
def support_point(c: Canvas, s: Scene, rng: np.random.Generator, margin: float = 0.15) -> tuple[float, float]:
    """A random point fully on the support (the object, or anywhere on a texture), ``margin`` from the border."""
    inside = (s.support >= 0.99) & (np.minimum(c.yy, c.xx) > margin) & (np.maximum(c.yy, c.xx) < 1 - margin)
    candidates = np.flatnonzero(inside)
    index = int(candidates[int(rng.integers(len(candidates)))])
    return float(c.yy.flat[index]), float(c.xx.flat[index])


def fine_crack(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """A hairline crack: 30-70 px long, about 2 px wide at its middle."""
    start, angle = support_point(c, s, rng), rng.uniform(0, 2 * math.pi)
    return draw_crack(c, s, rng, start, angle, rng.uniform(30, 70) * c.px, 1.1 * c.px)


def fine_scratch(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """A thin bright scratch: 40-90 px long, 1-2 px wide."""
    start, angle = support_point(c, s, rng), rng.uniform(0, 2 * math.pi)
    return draw_scratch(c, s, rng, start, angle, rng.uniform(40, 90) * c.px, 0.9 * c.px)


def fine_spot(c: Canvas, s: Scene, rng: np.random.Generator) -> np.ndarray:
    """Two to four dark specks, 3-6 px across, close together."""
    cy, cx = support_point(c, s, rng)
    alpha = np.zeros((c.size, c.size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        y, x = cy + rng.normal(0, 12) * c.px, cx + rng.normal(0, 12) * c.px
        alpha = np.maximum(alpha, coverage(blob_sdf(c, y, x, rng.uniform(1.5, 3.0) * c.px, rng), c.px))
    alpha = alpha * s.support * rng.uniform(0.7, 0.9)
    return blend(s.image, jitter_colour(rng, (0.22, 0.17, 0.12), 0.1), alpha)


# =========================================================================== registry
Drawer = Callable[[Canvas, np.random.Generator], Scene]
DefectDrawer = Callable[[Canvas, Scene, np.random.Generator], np.ndarray]

SCENES: dict[str, Drawer] = {"weave": draw_weave, "marble": draw_marble, "pill": draw_pill, "ring": draw_ring}
DEFECTS: dict[str, dict[str, DefectDrawer]] = {
    "weave": {"color": weave_color, "hole": weave_hole, "stain": weave_stain, "thread": weave_thread},
    "marble": {"crack": marble_crack, "scratch": marble_scratch, "stain": marble_stain},
    "pill": {"color": pill_color, "crack": pill_crack, "spot": pill_spot},
    "ring": {"crack": ring_crack, "missing": ring_missing, "scratch": ring_scratch},
}
FINE_DEFECTS: dict[str, DefectDrawer] = {"fine_crack": fine_crack, "fine_scratch": fine_scratch, "fine_spot": fine_spot}


def defect_types(category: str, defects: str = "standard") -> tuple[str, ...]:
    """The defect folders of a category: its own (``"standard"``) or the fine kind's (``"fine"``)."""
    _check_category(category)
    if defects not in DEFECT_KINDS:
        raise DataError(f"defects={defects!r} is not a kind of defect; use one of {DEFECT_KINDS}")
    return DEFECT_TYPES[category] if defects == "standard" else FINE_DEFECT_TYPES


# =========================================================================== one sample
@dataclass(frozen=True)
class RenderedSample:
    """One synthetic sample drawn twice: ``clean`` without, ``image`` with its defect."""

    image: np.ndarray  # (H, W, 3) uint8, what is written to disk
    clean: np.ndarray  # (H, W, 3) uint8, the same sample without the defect
    mask: np.ndarray  # (H, W) bool, exactly the pixels where image != clean


def _stable_id(name: str) -> int:
    """A number for a name that does not depend on list order or Python's hash seed."""
    return zlib.crc32(name.encode("utf-8"))


def sample_seed(seed: int, category: str, split: str, defect: str, index: int):
    return np.random.SeedSequence([seed, _stable_id(category), _stable_id(split), _stable_id(defect), index])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def render_sample(
    category: str, index: int, split: str = "train", defect: str = "good", image_size: int = 256, seed: int = 0
) -> RenderedSample:
    """Draw sample ``index`` of ``<category>/<split>/<defect>/`` exactly as the dataset holds it.

    The scene, the defect and the sensor noise each get their own random stream, so the clean
    drawing is the same whether or not a defect is added on top.
    """
    _check_category(category)
    drawers = {**DEFECTS[category], **FINE_DEFECTS}
    if defect != "good" and defect not in drawers:
        raise DataError(
            f"unknown defect {defect!r} for {category!r}; use one of {DEFECT_TYPES[category]}, "
            f"the fine kind's {FINE_DEFECT_TYPES} or 'good'"
        )
    canvas = make_canvas(int(image_size))
    scene_seed, defect_seed, noise_seed = sample_seed(seed, category, split, defect, index).spawn(3)
    scene = SCENES[category](canvas, np.random.default_rng(scene_seed))
    noise = SENSOR_NOISE * np.random.default_rng(noise_seed).standard_normal(scene.image.shape, np.float32)
    clean = to_uint8(scene.image + noise)
    if defect == "good":
        return RenderedSample(clean, clean, np.zeros(clean.shape[:2], dtype=bool))
    defect_rng = np.random.default_rng(defect_seed)
    for _ in range(10):  # a defect that changed no pixel (tiny images) is drawn again
        image = to_uint8(drawers[defect](canvas, scene, defect_rng) + noise)
        mask = np.any(image != clean, axis=-1)
        if mask.any():
            return RenderedSample(image, clean, mask)
    raise DataError(f"could not draw a visible {defect!r} defect at image_size={image_size}; use a larger image_size")


# =========================================================================== whole dataset
def _check_category(category: str) -> None:
    if category not in DEFECT_TYPES:
        raise DataError(f"unknown synthetic category {category!r}; use one of {SYNTHETIC_CATEGORIES} or 'all'")


def _resolve_categories(categories: str | Iterable[str]) -> list[str]:
    if isinstance(categories, str):
        categories = list(SYNTHETIC_CATEGORIES) if categories == "all" else [categories]
    categories = list(categories)
    for name in categories:
        _check_category(name)
    if not categories:
        raise DataError("no categories given; use 'all' or names from SYNTHETIC_CATEGORIES")
    return categories


def defect_counts(category: str, n_test_defect: int, defects: str = "standard") -> dict[str, int]:
    """Spread ``n_test_defect`` images as evenly as possible over the category's defect types."""
    names = defect_types(category, defects)
    base, extra = divmod(n_test_defect, len(names))
    return {name: base + (1 if k < extra else 0) for k, name in enumerate(names)}


def _save_png(path: Path, array: np.ndarray) -> None:
    # PIL writes no timestamps, so equal arrays give byte-identical files. Noisy images barely
    # compress, so fast Huffman-only zlib gives about the same size in a fraction of the time.
    Image.fromarray(array).save(path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)


def _file_name(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(max(count - 1, 0))))}d}"


def _prepare_category_dir(folder: Path) -> None:
    """Empty a folder we generated before; refuse to touch a folder holding someone's data."""
    if folder.exists():
        if not (folder / MARKER_NAME).is_file() and any(folder.iterdir()):
            raise DataError(
                f"{folder} exists and was not made by generate_synthetic_dataset; "
                f"choose another root or delete it yourself"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _generate_category(
    root: Path,
    category: str,
    image_size: int,
    seed: int,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    defects: str = "standard",
) -> dict[str, int]:
    folder = root / category
    _prepare_category_dir(folder)
    plan = [("train", "good", n_train), ("test", "good", n_test_good)]
    plan += [("test", d, n) for d, n in defect_counts(category, n_test_defect, defects).items()]
    written: dict[str, int] = {}
    for split, defect, count in plan:
        image_dir = folder / split / defect
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = folder / "ground_truth" / defect
        if defect != "good":
            mask_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            sample = render_sample(category, index, split, defect, image_size, seed)
            name = _file_name(index, count)
            _save_png(image_dir / f"{name}.png", sample.image)
            if defect != "good":
                _save_png(mask_dir / f"{name}_mask.png", sample.mask.astype(np.uint8) * 255)
        written[f"{split}/{defect}"] = count
    # the marker says "adlearn made this" (so a rerun may replace it) and records the arguments
    arguments = {
        "generator_version": GENERATOR_VERSION,
        "category": category,
        "image_size": image_size,
        "seed": seed,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        **({"defects": defects} if defects != "standard" else {}),
    }
    (folder / MARKER_NAME).write_text(json.dumps(arguments, indent=2, sort_keys=True))
    return written


def _check_counts(image_size: int, n_train: int, n_test_good: int, n_test_defect: int) -> None:
    if int(image_size) < 32:
        raise DataError(f"image_size must be at least 32 pixels, got {image_size}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise DataError(
            f"need n_train >= 1 and non-negative test counts, got n_train={n_train}, "
            f"n_test_good={n_test_good}, n_test_defect={n_test_defect}"
        )


def generate_synthetic_dataset(
    root: str | Path,
    categories: str | Iterable[str] = "all",
    image_size: int = 256,
    seed: int = 0,
    n_train: int = 100,
    n_test_good: int = 20,
    n_test_defect: int = 40,
    defects: str = "standard",
) -> Path:
    """Write the synthetic dataset in the MVTec layout under ``root`` and return ``root``.

    For each category: ``train/good/`` (``n_train`` images), ``test/good/`` (``n_test_good``),
    ``test/<defect>/`` (``n_test_defect`` spread over the defect types) and
    ``ground_truth/<defect>/<stem>_mask.png`` (0/255). A category folder written earlier by
    this function is replaced; any other existing folder of that name is left alone (error).
    ``defects="fine"``: the fine kind's defects (a few pixels wide) instead of the category's own.
    """
    _check_counts(image_size, n_train, n_test_good, n_test_defect)
    categories = _resolve_categories(categories)
    for category in categories:
        defect_types(category, defects)  # an unknown kind fails before anything is written
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        _generate_category(
            root, category, int(image_size), int(seed), int(n_train), int(n_test_good), int(n_test_defect), defects
        )
    return root


# =========================================================================== cache
def _remove_abandoned_builds(final: Path) -> None:
    """Delete ``<key>.tmp-<pid>-*`` folders left by generating processes that no longer run."""
    for folder in final.parent.glob(f"{final.name}.tmp-*"):
        try:
            pid = int(folder.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)  # signal 0 only asks "does this process exist?"
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue  # not ours to judge: leave it


def synthetic_root(
    image_size: int = 256,
    seed: int = 0,
    n_train: int = 100,
    n_test_good: int = 20,
    n_test_defect: int = 40,
    defects: str = "standard",
    categories: str | Iterable[str] = "all",
) -> Path:
    """Generate the synthetic dataset once (all categories) into the cache and return its root.

    ``defects="fine"``: defects a few pixels wide (for high resolutions); ``categories``: only these
    (a name or names; large images take a while to draw). Each choice is its own cached copy.

    The cached copy is keyed by the arguments and the generator version. It is built in a
    temporary folder that is renamed into place only when complete (a marker file is written
    last), so an interrupted run never leaves a half-written dataset that looks finished, and
    two processes asking at once do not trip over each other.
    """
    _check_counts(image_size, n_train, n_test_good, n_test_defect)
    chosen = _resolve_categories(categories)
    for category in chosen:
        defect_types(category, defects)
    key = (
        f"synthetic-v{GENERATOR_VERSION}-size{int(image_size)}-seed{int(seed)}"
        f"-train{int(n_train)}-good{int(n_test_good)}-defect{int(n_test_defect)}"
    )
    key += f"-{defects}" if defects != "standard" else ""
    key += f"-{'+'.join(chosen)}" if chosen != list(SYNTHETIC_CATEGORIES) else ""
    final = cache_dir() / key
    if (final / COMPLETE_NAME).is_file():
        return final
    if final.exists():  # left over from an interrupted older layout: start again
        shutil.rmtree(final, ignore_errors=True)
    _remove_abandoned_builds(final)
    building = final.with_name(f"{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        generate_synthetic_dataset(building, chosen, image_size, seed, n_train, n_test_good, n_test_defect, defects)
        arguments = {
            "generator_version": GENERATOR_VERSION,
            "image_size": int(image_size),
            "seed": int(seed),
            "n_train": int(n_train),
            "n_test_good": int(n_test_good),
            "n_test_defect": int(n_test_defect),
            "categories": chosen,
            **({"defects": defects} if defects != "standard" else {}),
        }
        (building / COMPLETE_NAME).write_text(json.dumps(arguments, indent=2, sort_keys=True))
        try:
            os.rename(building, final)
        except OSError:
            if not (final / COMPLETE_NAME).is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


# =========================================================================== CLI entry point
def synth_command(
    root: str | Path,
    category: str = "all",
    image_size: int = 256,
    seed: int = 0,
    n_train: int = 100,
    n_test_good: int = 20,
    n_test_defect: int = 40,
) -> Path:
    """``adlearn data synth``: generate the dataset under ``root`` and print what was written."""
    categories = _resolve_categories(category)
    start = time.perf_counter()
    root = Path(root).expanduser()
    for name in categories:
        began = time.perf_counter()
        generate_synthetic_dataset(root, name, image_size, seed, n_train, n_test_good, n_test_defect)
        defects = ", ".join(f"{d} {n}" for d, n in defect_counts(name, n_test_defect).items())
        print(
            f"{name} ({CATEGORY_KIND[name]}): {n_train} train, {n_test_good} test good, "
            f"{n_test_defect} defective ({defects}) -> {root / name} "
            f"[{time.perf_counter() - began:.1f} s]"
        )
    print(
        f"wrote {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} at "
        f"{image_size}x{image_size} px, seed {seed}, in {time.perf_counter() - start:.1f} s. "
        f"Load one with MVTecDataset({str(root)!r}, {categories[0]!r}, split='test')"
    )
    return root
