"""An embedded, deterministic surveillance-video dataset: people walking across a plaza.

Video anomaly benchmarks (UCSD Ped2, CUHK Avenue) are downloads of hundreds of megabytes; this
module *draws* a small one in seconds, so the AI-VAD notebook and the tests have videos at hand.
A fixed camera looks at a paved plaza (a textured floor, a lawn, a bench and lamp posts, a soft
lighting gradient). Its frames change the way a real camera's do: the light drifts a little
from frame to frame and every pixel carries sensor noise.

**Normal activity** (training and test videos): articulated stick figures (head, torso, two
arms, two legs swinging with the walking cycle) walk along the plaza at walking speed, in both
directions and on slightly slanted paths; nearer figures are larger (a simple perspective) and
are drawn over farther ones, so figures passing each other occlude one another.

**Anomalies** (test videos only), one event per test video, chosen to separate the three
attributes of the AI-VAD paper (Reiss & Hoshen, arXiv 2212.00789, Sec. 3):

=========  ============  ========================================================================
event      kind          what is drawn
=========  ============  ========================================================================
runner     velocity      a figure running at about four times walking speed (longer strides)
cyclist    velocity      a rider on a bicycle, about three times walking speed
crawler    pose          a figure on hands and knees, moving at walking speed
faller     pose          a walker who falls over and squirms on the ground
car        appearance    a car-like box on wheels, at walking speed (an object never seen in training)
cart       appearance    a rolling crate on small wheels, at walking speed
=========  ============  ========================================================================

Test video ``i`` holds event ``EVENT_ORDER[i % 6]``, starting 35-45% of the way in, so every test
video has normal frames before its anomaly and anomalous frames after its start.

**Ground truth.** Each actor is drawn with an anti-aliased coverage ``alpha``; a pixel belongs
to the actor drawn last over it with ``alpha >= 0.5``. A frame's mask is the set of pixels that
belong to the anomalous actor while it is anomalous (the faller only from the moment it starts
falling), so the mask is the *visible* part of the anomaly: a walker passing in front hides it.
A frame is anomalous (label 1, ``kind`` its event's kind) exactly when its mask has a pixel.
`render_video` can draw a test video without its anomalous actor, so a test can check that the
mask is where the actor was drawn.

**Determinism.** Video ``i`` of a split depends only on ``(seed, split, i)`` and the size: the
same arguments give byte-identical frames; asking for more videos adds new ones without changing
the first ones. `synthetic_surveillance` caches the videos as ``.npy`` files under
``adlearn.cache.cache_dir()`` and returns them as a ``list[Video]`` (``ClipDataset`` takes it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adlearn.cache import cache_dir
from adlearn.data.errors import DataError
from adlearn.data.perlin import fractal_perlin
from adlearn.data.synthetic import _remove_abandoned_builds as remove_abandoned_builds
from adlearn.data.video import Video

#: Bump when the drawings change, so cached copies are regenerated.
GENERATOR_VERSION = 2

DEFAULT_SIZE = (128, 160)  # (H, W)
DEFAULT_VIDEOS = {"train": 6, "test": 6}
DEFAULT_FRAMES = 40

#: The anomalous events of the test videos and the attribute each one breaks.
EVENTS: dict[str, str] = {
    "runner": "velocity",
    "car": "appearance",
    "crawler": "pose",
    "cyclist": "velocity",
    "cart": "appearance",
    "faller": "pose",
}
EVENT_ORDER: tuple[str, ...] = tuple(EVENTS)

SENSOR_NOISE = 0.01  # per-pixel standard deviation, in [0, 1] units
LIGHT_DRIFT = 0.03  # amplitude of the slow global brightness drift
WALK_SPEED = (0.9, 1.5)  # pixels per frame at 128 px image height, nearest lane
COMPLETE_NAME = ".adlearn_complete.json"


# =========================================================================== drawing kit
@dataclass(frozen=True)
class Shape:
    """One primitive with its colour: a capsule (thick segment), disc, ring or rotated box.

    Coordinates are pixels (x to the right, y down). ``sdf`` gives the signed distance in
    pixels (negative inside) on a window of pixel centres.
    """

    kind: str  # "capsule" | "disc" | "ring" | "box"
    params: tuple[float, ...]
    colour: tuple[float, float, float]

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1), generous by the shape's thickness."""
        p = self.params
        if self.kind == "capsule":
            x1, y1, x2, y2, r = p
            return min(x1, x2) - r, min(y1, y2) - r, max(x1, x2) + r, max(y1, y2) + r
        if self.kind in ("disc", "ring"):
            cx, cy, r = p[0], p[1], p[2] + (p[3] if self.kind == "ring" else 0.0)
            return cx - r, cy - r, cx + r, cy + r
        cx, cy, hw, hh, _angle, rounding = p
        reach = math.hypot(hw, hh) + rounding
        return cx - reach, cy - reach, cx + reach, cy + reach

    def sdf(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        p = self.params
        if self.kind == "capsule":
            x1, y1, x2, y2, r = p
            dx, dy = x2 - x1, y2 - y1
            length2 = dx * dx + dy * dy
            t = np.clip(((xx - x1) * dx + (yy - y1) * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
            return np.hypot(xx - (x1 + t * dx), yy - (y1 + t * dy)) - r
        if self.kind == "disc":
            return np.hypot(xx - p[0], yy - p[1]) - p[2]
        if self.kind == "ring":
            return np.abs(np.hypot(xx - p[0], yy - p[1]) - p[2]) - p[3]
        cx, cy, hw, hh, angle, rounding = p  # rotated rounded box
        c, s = math.cos(angle), math.sin(angle)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        qx, qy = np.abs(u) - (hw - rounding), np.abs(v) - (hh - rounding)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) - rounding


def draw(image: np.ndarray, owner: np.ndarray, shape: Shape, actor_id: int) -> None:
    """Blend ``shape`` into ``image`` (H, W, 3) with anti-aliased coverage; where its coverage is
    at least one half, the pixel now belongs to ``actor_id`` in ``owner`` (H, W)."""
    height, width = owner.shape
    shape = at_least_one_pixel(shape)
    x0, y0, x1, y1 = shape.bbox()
    c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 2, width)
    r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 2, height)
    if c0 >= c1 or r0 >= r1:
        return  # outside the frame
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5  # pixel centres
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    alpha = np.clip(0.5 - shape.sdf(xx, yy), 0.0, 1.0).astype(np.float32)  # (h, w), a 1-px ramp
    window = image[r0:r1, c0:c1]
    window += alpha[..., None] * (np.asarray(shape.colour, np.float32) - window)
    owner[r0:r1, c0:c1][alpha >= 0.5] = actor_id


MIN_HALF_WIDTH = 0.75  # pixels: a thinner line would never cover half a pixel and so never show in a mask


def at_least_one_pixel(shape: Shape) -> Shape:
    """Thicken capsules, rings and discs thinner than 1.5 px (small images): every drawn part reaches a
    coverage of one half somewhere, so the mask holds every part of an actor that was drawn."""
    if shape.kind == "capsule" and shape.params[4] < MIN_HALF_WIDTH:
        return Shape("capsule", (*shape.params[:4], MIN_HALF_WIDTH), shape.colour)
    if shape.kind == "ring" and shape.params[3] < MIN_HALF_WIDTH:
        return Shape("ring", (*shape.params[:3], MIN_HALF_WIDTH), shape.colour)
    if shape.kind == "disc" and shape.params[2] < MIN_HALF_WIDTH:
        return Shape("disc", (*shape.params[:2], MIN_HALF_WIDTH), shape.colour)
    return shape


def rotate_about(points: dict[str, tuple[float, float]], pivot, angle: float) -> dict[str, tuple[float, float]]:
    """Rotate named (x, y) points by ``angle`` (radians, clockwise on screen) about ``pivot``."""
    c, s = math.cos(angle), math.sin(angle)
    px, py = pivot
    return {k: (px + (x - px) * c - (y - py) * s, py + (x - px) * s + (y - py) * c) for k, (x, y) in points.items()}


# =========================================================================== the figures
@dataclass
class Actor:
    """Something that crosses the plaza: a walker, or one of the anomalous events.

    Its feet move in a straight line from ``(x0, y0)`` at ``t0`` with velocity ``(vx, vy)``
    pixels per frame; its height follows the perspective of its feet's row.
    """

    event: str  # "walker" or a key of EVENTS
    x0: float
    y0: float
    vx: float
    vy: float
    t0: int
    colours: dict[str, tuple[float, float, float]]
    phase: float = 0.0  # walking-cycle phase at t0
    fall_at: int | None = None  # the faller: frame where the fall starts
    anomalous: bool = False

    def feet(self, t: int) -> tuple[float, float]:
        dt = t - self.t0
        if self.fall_at is not None and t > self.fall_at:  # stumbles on, then squirms slowly along the ground
            dt = self.fall_at - self.t0 + min(t - self.fall_at, 4) * 0.5 + max(t - self.fall_at - 4, 0) * 0.15
        return self.x0 + self.vx * dt, self.y0 + self.vy * dt

    def is_anomalous_at(self, t: int) -> bool:
        if not self.anomalous:
            return False
        return self.fall_at is None or t >= self.fall_at


def figure_height(feet_y: float, height: int) -> float:
    """Perspective: people are 28% of the image high at the bottom row, 16% at the back of the plaza."""
    depth = np.clip((feet_y / height - 0.38) / 0.62, 0.0, 1.0)
    return height * (0.16 + 0.12 * float(depth))


def person(x: float, y: float, h: float, swing: float, lean: float, colours, fall: float = 0.0) -> list[Shape]:
    """An articulated stick figure standing at feet (x, y), ``h`` pixels tall.

    ``swing`` is the leg angle of the walking cycle (arms swing against it), ``lean`` tilts the
    torso forward, ``fall`` rotates the whole body about the feet (pi/2: lying on the ground).
    """
    hip = (x, y - 0.48 * h)
    neck = (x + lean * 0.3 * h, y - 0.80 * h)
    joints = {
        "hip": hip,
        "neck": neck,
        "head": (neck[0] + lean * 0.06 * h, neck[1] - 0.11 * h),
        "foot_l": (hip[0] + 0.48 * h * math.sin(swing), hip[1] + 0.48 * h * math.cos(swing)),
        "foot_r": (hip[0] - 0.48 * h * math.sin(swing), hip[1] + 0.48 * h * math.cos(swing)),
        "hand_l": (neck[0] - 0.34 * h * math.sin(0.8 * swing), neck[1] + 0.34 * h * math.cos(0.8 * swing)),
        "hand_r": (neck[0] + 0.34 * h * math.sin(0.8 * swing), neck[1] + 0.34 * h * math.cos(0.8 * swing)),
    }
    if fall:
        joints = rotate_about(joints, (x, y), fall)
    j = joints
    legs, torso, arms, skin = colours["legs"], colours["torso"], colours["torso"], colours["skin"]
    return [
        Shape("capsule", (*j["hip"], *j["foot_r"], 0.055 * h), legs),
        Shape("capsule", (*j["neck"], *j["hand_r"], 0.04 * h), arms),
        Shape("capsule", (*j["hip"], *j["neck"], 0.1 * h), torso),
        Shape("capsule", (*j["hip"], *j["foot_l"], 0.055 * h), legs),
        Shape("capsule", (*j["neck"], *j["hand_l"], 0.04 * h), arms),
        Shape("disc", (*j["head"], 0.09 * h), skin),
    ]


def crawler(x: float, y: float, h: float, swing: float, direction: float, colours) -> list[Shape]:
    """A figure on hands and knees: a horizontal torso, limbs down to the ground, head in front."""
    hip = (x - direction * 0.22 * h, y - 0.22 * h)
    shoulder = (x + direction * 0.22 * h, y - 0.25 * h)
    head = (shoulder[0] + direction * 0.1 * h, shoulder[1] - 0.06 * h)
    step = 0.08 * h * math.sin(swing)
    legs, torso, skin = colours["legs"], colours["torso"], colours["skin"]
    return [
        Shape("capsule", (*hip, hip[0] - direction * 0.05 * h + step, y, 0.055 * h), legs),
        Shape("capsule", (*shoulder, shoulder[0] - step, y, 0.04 * h), torso),
        Shape("capsule", (*hip, *shoulder, 0.1 * h), torso),
        Shape("capsule", (*hip, hip[0] - direction * 0.05 * h - step, y, 0.055 * h), legs),
        Shape("capsule", (*shoulder, shoulder[0] + step, y, 0.04 * h), torso),
        Shape("disc", (*head, 0.09 * h), skin),
    ]


def bicycle(x: float, y: float, h: float, t: float, direction: float, colours) -> list[Shape]:
    """A rider on a bicycle; the pedals turn with ``t``."""
    r = 0.17 * h
    back, front = (x - direction * 0.3 * h, y - r), (x + direction * 0.3 * h, y - r)
    crank = (x, y - r)
    seat = (x - direction * 0.08 * h, y - 0.52 * h)
    bars = (x + direction * 0.24 * h, y - 0.58 * h)
    neck = (x + direction * 0.02 * h, y - 0.86 * h)
    pedal = (crank[0] + 0.1 * h * math.cos(t), crank[1] + 0.1 * h * math.sin(t))
    frame, dark = colours["frame"], (0.12, 0.12, 0.13)
    legs, torso, skin = colours["legs"], colours["torso"], colours["skin"]
    return [
        Shape("ring", (*back, r, 0.025 * h), dark),
        Shape("ring", (*front, r, 0.025 * h), dark),
        Shape("capsule", (*back, *crank, 0.02 * h), frame),
        Shape("capsule", (*crank, *seat, 0.02 * h), frame),
        Shape("capsule", (*seat, *bars, 0.02 * h), frame),
        Shape("capsule", (*bars, *front, 0.02 * h), frame),
        Shape("capsule", (*seat, *pedal, 0.055 * h), legs),
        Shape("capsule", (*seat, *neck, 0.1 * h), torso),
        Shape("capsule", (*neck, *bars, 0.04 * h), torso),
        Shape("disc", (neck[0] + direction * 0.04 * h, neck[1] - 0.1 * h, 0.09 * h), skin),
    ]


def car(x: float, y: float, h: float, direction: float, colours) -> list[Shape]:
    """A car-like box: a body, a cabin with a dark window, two wheels."""
    body_w, body_h = 0.85 * h, 0.2 * h
    dark = (0.1, 0.1, 0.11)
    return [
        Shape("box", (x, y - 0.12 * h - body_h / 2, body_w, body_h / 2, 0.0, 0.04 * h), colours["body"]),
        Shape("box", (x - direction * 0.08 * h, y - 0.36 * h, 0.45 * h, 0.12 * h, 0.0, 0.05 * h), colours["body"]),
        Shape("box", (x - direction * 0.03 * h, y - 0.37 * h, 0.32 * h, 0.075 * h, 0.0, 0.02 * h), (0.2, 0.25, 0.3)),
        Shape("disc", (x - 0.55 * h, y - 0.1 * h, 0.1 * h), dark),
        Shape("disc", (x + 0.55 * h, y - 0.1 * h, 0.1 * h), dark),
    ]


def cart(x: float, y: float, h: float, colours) -> list[Shape]:
    """A crate on small wheels, as tall as a person's waist."""
    dark = (0.1, 0.1, 0.11)
    return [
        Shape("box", (x, y - 0.3 * h, 0.3 * h, 0.22 * h, 0.0, 0.02 * h), colours["body"]),
        Shape("capsule", (x - 0.3 * h, y - 0.3 * h, x + 0.3 * h, y - 0.3 * h, 0.015 * h), dark),
        Shape("disc", (x - 0.2 * h, y - 0.05 * h, 0.05 * h), dark),
        Shape("disc", (x + 0.2 * h, y - 0.05 * h, 0.05 * h), dark),
    ]


def actor_shapes(actor: Actor, t: int, height: int) -> list[Shape]:
    """The shapes of ``actor`` at frame ``t``."""
    x, y = actor.feet(t)
    h = figure_height(y, height)
    direction = 1.0 if actor.vx >= 0 else -1.0
    travelled = math.hypot(actor.vx, actor.vy) * (t - actor.t0)
    if actor.event in ("walker", "faller"):
        if actor.fall_at is not None and t >= actor.fall_at:
            progress = min((t - actor.fall_at) / 6.0, 1.0)  # six frames from upright to lying
            walked = math.hypot(actor.vx, actor.vy) * (actor.fall_at - actor.t0)
            swing = 0.45 * math.sin(actor.phase + 2 * math.pi * walked / (0.75 * h))
            if progress == 1.0:  # on the ground, arms and legs keep moving: it stays visible to motion
                swing = 0.5 * math.sin(2 * math.pi * (t - actor.fall_at) / 7.0)
            return person(x, y, h, swing, 0.0, actor.colours, fall=direction * progress * math.pi / 2)
        swing = 0.45 * math.sin(actor.phase + 2 * math.pi * travelled / (0.75 * h))
        return person(x, y, h, swing, 0.0, actor.colours)
    if actor.event == "runner":
        swing = 0.8 * math.sin(actor.phase + 2 * math.pi * travelled / (1.6 * h))
        return person(x, y, h, swing, direction * 0.35, actor.colours)
    if actor.event == "crawler":
        return crawler(x, y, h, actor.phase + 2 * math.pi * travelled / (0.4 * h), direction, actor.colours)
    if actor.event == "cyclist":
        return bicycle(x, y, h, actor.phase + travelled / (0.2 * h), direction, actor.colours)
    if actor.event == "car":
        return car(x, y, h, direction, actor.colours)
    if actor.event == "cart":
        return cart(x, y, h, actor.colours)
    raise DataError(f"unknown actor {actor.event!r}")


# =========================================================================== the scene
def background(size: tuple[int, int], seed: int) -> np.ndarray:
    """The fixed view of the plaza, float32 (H, W, 3) in [0, 1]: the same for every video of a seed."""
    height, width = size
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_id("background")]))
    yy = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height  # (H, 1)
    xx = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width  # (1, W)
    texture = fractal_perlin((height, width), (4, 5), octaves=4, rng=rng)  # (H, W) in [-1, 1]
    paving = np.array([0.55, 0.53, 0.5], np.float32) + 0.06 * texture[..., None]
    # paving joints: horizontal rows denser towards the horizon, vertical lines converging on it
    depth = np.clip((yy - 0.24) / 0.76, 0.05, 1.0)
    rows = np.abs(np.sin(np.pi * 3.0 / depth)) < 0.08
    columns = np.abs(np.sin(np.pi * 9.0 * (xx - 0.5) / (0.4 + 0.6 * depth))) < 0.06
    paving = paving - 0.07 * (rows | columns)[..., None]
    lawn = np.array([0.3, 0.45, 0.25], np.float32) + 0.08 * texture[..., None]
    image = np.where((yy < 0.24)[..., None], lawn, paving).astype(np.float32)
    # static furniture: a bench and two lamp posts on the lawn's edge
    owner = np.zeros(size, np.int32)
    furniture = [
        Shape("box", (0.25 * width, 0.21 * height, 0.1 * width, 0.015 * height, 0.0, 1.0), (0.4, 0.3, 0.2)),
        Shape("capsule", (0.7 * width, 0.03 * height, 0.7 * width, 0.24 * height, 0.012 * height), (0.2, 0.2, 0.22)),
        Shape("capsule", (0.92 * width, 0.0, 0.92 * width, 0.26 * height, 0.014 * height), (0.2, 0.2, 0.22)),
    ]
    for shape in furniture:
        draw(image, owner, shape, 0)
    # lighting: brighter towards one corner, darker vignette
    light = 1.0 + 0.12 * (0.5 - yy) + 0.08 * (xx - 0.5) - 0.15 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    return np.clip(image * light[..., None], 0.0, 1.0).astype(np.float32)


def _stable_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _colours(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Clothes and skin for a person (and the frame/body colour of a vehicle)."""

    def pick(low: float, high: float) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(low, high, 3))

    shade = float(rng.uniform(0.35, 0.85))
    return {
        "torso": pick(0.05, 0.95),
        "legs": pick(0.05, 0.5),
        "skin": (shade, shade * 0.8, shade * 0.65),
        "frame": pick(0.5, 0.95),
        "body": pick(0.2, 0.95),
    }


def _walker(rng: np.random.Generator, size: tuple[int, int], entering_at: int | None = None) -> Actor:
    """A walker on a lane of the plaza, already in view at frame 0 or entering from a side."""
    height, width = size
    y0 = float(rng.uniform(0.45, 0.98)) * height
    scale = figure_height(y0, height) / figure_height(height, height)
    speed = float(rng.uniform(*WALK_SPEED)) * height / 128 * scale
    direction = 1.0 if rng.random() < 0.5 else -1.0
    slope = float(rng.uniform(-0.15, 0.15))
    if entering_at is None:
        x0, t0 = float(rng.uniform(0.05, 0.95)) * width, 0
    else:
        x0, t0 = (-0.05 * width if direction > 0 else 1.05 * width), entering_at
    return Actor(
        "walker", x0, y0, direction * speed, slope * speed, t0, _colours(rng), phase=float(rng.uniform(0, 2 * np.pi))
    )


def _event(name: str, rng: np.random.Generator, size: tuple[int, int], start: int) -> Actor:
    """The anomalous actor of a test video, entering (or falling) at frame ``start``."""
    height, width = size
    if name == "faller":  # a walker in view from the start who falls at ``start``
        actor = _walker(rng, size)
        actor.x0 = float(rng.uniform(0.3, 0.7)) * width - actor.vx * start  # falls mid-plaza
        actor.event, actor.fall_at, actor.anomalous = "faller", start, True
        return actor
    y0 = float(rng.uniform(0.55, 0.95)) * height
    scale = figure_height(y0, height) / figure_height(height, height)
    walk = float(np.mean(WALK_SPEED)) * height / 128 * scale
    factor = {"runner": 4.0, "cyclist": 3.0, "crawler": 1.0, "car": 1.2, "cart": 1.0}[name]
    direction = 1.0 if rng.random() < 0.5 else -1.0
    # at ``start`` the actor's front just touches the edge of the view: it shows from the next frame on
    half_length = {"runner": 0.5, "cyclist": 0.5, "crawler": 0.45, "car": 0.95, "cart": 0.35}[name]
    outside = half_length * figure_height(y0, height) + 1.0
    x0 = -outside if direction > 0 else width + outside
    return Actor(
        name,
        x0,
        y0,
        direction * walk * factor,
        0.0,
        start,
        _colours(rng),
        phase=float(rng.uniform(0, 2 * np.pi)),
        anomalous=True,
    )


@dataclass
class VideoPlan:
    """Everything random about one video, drawn before any pixel is."""

    name: str
    size: tuple[int, int]
    n_frames: int
    actors: list[Actor]
    event: str  # "" for a normal video
    gains: np.ndarray  # (N,) global brightness per frame
    noise_seed: np.random.SeedSequence
    seed: int = 0  # the dataset seed (it also fixes the background)


def plan_video(split: str, index: int, seed: int = 0, n_frames: int = DEFAULT_FRAMES, size=DEFAULT_SIZE) -> VideoPlan:
    """Draw the actors and lighting of video ``index`` of ``split``; test videos get event ``EVENT_ORDER[index % 6]``."""
    height, width = size
    actors_seed, event_seed, light_seed, noise_seed = np.random.SeedSequence(
        [seed, _stable_id("video"), _stable_id(split), index]
    ).spawn(4)
    rng = np.random.default_rng(actors_seed)
    n_present = int(rng.integers(1, 3))
    n_entering = int(rng.integers(1, 3)) + n_frames // 60
    actors = [_walker(rng, size) for _ in range(n_present)]
    actors += [_walker(rng, size, int(rng.integers(0, n_frames))) for _ in range(n_entering)]
    # a pair walking towards each other on nearly the same lane: they meet mid-video and occlude
    lane = float(rng.uniform(0.5, 0.9)) * height
    for side in (-1.0, 1.0):
        walker = _walker(rng, size)
        walker.y0, walker.vy = lane + side * 0.02 * height, 0.0
        walker.vx = -side * abs(walker.vx)
        walker.x0 = 0.5 * width - walker.vx * (n_frames * float(rng.uniform(0.3, 0.7)))
        actors.append(walker)
    event = ""
    if split == "test":
        event = EVENT_ORDER[index % len(EVENT_ORDER)]
        event_rng = np.random.default_rng(event_seed)
        start = int(round(n_frames * float(event_rng.uniform(0.35, 0.45))))
        actors.append(_event(event, event_rng, size, start))
    light_rng = np.random.default_rng(light_seed)
    t = np.arange(n_frames)
    gains = 1.0 + LIGHT_DRIFT * np.sin(2 * np.pi * t / float(light_rng.uniform(40, 90)) + light_rng.uniform(0, 6.3))
    gains = gains + 0.005 * light_rng.standard_normal(n_frames)
    name = f"{split}_{index:03d}"
    return VideoPlan(name, (height, width), n_frames, actors, event, gains.astype(np.float32), noise_seed, seed)


def render_frame(
    plan: VideoPlan, t: int, scene: np.ndarray, noise: np.ndarray, include_anomaly: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t``: ``uint8 (H, W, 3)`` and its ``uint8 (H, W)`` mask of the anomalous actor's pixels."""
    height = plan.size[0]
    image = scene * plan.gains[t]  # (H, W, 3)
    owner = np.zeros(plan.size, np.int32)  # which actor covers each pixel (0: background)
    order = sorted(range(len(plan.actors)), key=lambda k: plan.actors[k].feet(t)[1])  # far ones first
    anomalous_ids = set()
    for k in order:
        actor = plan.actors[k]
        if actor.anomalous and not include_anomaly:
            continue
        if actor.is_anomalous_at(t):
            anomalous_ids.add(k + 1)
        for shape in actor_shapes(actor, t, height):
            draw(image, owner, shape, k + 1)
    frame = np.clip(np.round((image + noise) * 255.0), 0, 255).astype(np.uint8)
    mask = np.isin(owner, list(anomalous_ids)).astype(np.uint8) if anomalous_ids else np.zeros(plan.size, np.uint8)
    return frame, mask


def render_video(plan: VideoPlan, scene: np.ndarray | None = None, include_anomaly: bool = True):
    """All frames ``uint8 (N, H, W, 3)``, masks ``uint8 (N, H, W)``, labels ``int64 (N,)`` and kinds of a plan."""
    if scene is None:
        scene = background(plan.size, plan.seed)
    noise_rng = np.random.default_rng(plan.noise_seed)
    frames = np.empty((plan.n_frames, *plan.size, 3), np.uint8)
    masks = np.empty((plan.n_frames, *plan.size), np.uint8)
    for t in range(plan.n_frames):
        noise = SENSOR_NOISE * noise_rng.standard_normal((*plan.size, 3), dtype=np.float32)
        frames[t], masks[t] = render_frame(plan, t, scene, noise, include_anomaly)
    labels = masks.reshape(plan.n_frames, -1).any(axis=1).astype(np.int64)
    kinds = [EVENTS[plan.event] if label else "" for label in labels]
    return frames, masks, labels, kinds


# =========================================================================== the dataset
def _check(split: str, n_videos: int, n_frames: int, size: tuple[int, int]) -> None:
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if n_videos < 1 or n_frames < 8:
        raise DataError(f"need n_videos >= 1 and n_frames >= 8, got n_videos={n_videos}, n_frames={n_frames}")
    if len(size) != 2 or min(size) < 48:
        raise DataError(f"size must be (H, W) with both sides at least 48 pixels, got {size}")


def generate_videos(split: str, seed: int, n_videos: int, n_frames: int, size: tuple[int, int]) -> list[dict]:
    """Render a split in memory: a list of ``{"name", "frames", "masks", "labels", "kinds", "event"}``."""
    scene = background(size, seed)
    out = []
    for index in range(n_videos):
        plan = plan_video(split, index, seed, n_frames, size)
        frames, masks, labels, kinds = render_video(plan, scene)
        out.append({"name": plan.name, "frames": frames, "masks": masks, "labels": labels, "kinds": kinds})
        out[-1]["event"] = plan.event
    return out


def _as_videos(items: list[dict], split: str) -> list[Video]:
    return [
        Video.from_arrays(
            item["name"],
            item["frames"],
            masks=item["masks"] if split == "test" else None,
            frame_labels=item["labels"],
            kinds=item["kinds"],
        )
        for item in items
    ]


def _write(folder: Path, items: list[dict]) -> None:
    for item in items:
        np.save(folder / f"{item['name']}_frames.npy", item["frames"])
        np.save(folder / f"{item['name']}_masks.npy", item["masks"])
    meta = [
        {"name": i["name"], "labels": i["labels"].tolist(), "kinds": i["kinds"], "event": i["event"]} for i in items
    ]
    (folder / "videos.json").write_text(json.dumps(meta))


def _read(folder: Path) -> list[dict]:
    meta = json.loads((folder / "videos.json").read_text())
    return [
        {
            "name": m["name"],
            "frames": np.load(folder / f"{m['name']}_frames.npy", mmap_mode="r"),
            "masks": np.load(folder / f"{m['name']}_masks.npy", mmap_mode="r"),
            "labels": np.asarray(m["labels"], np.int64),
            "kinds": m["kinds"],
            "event": m["event"],
        }
        for m in meta
    ]


def synthetic_surveillance(
    split: str = "train",
    seed: int = 0,
    n_videos: int | None = None,
    n_frames: int | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    cache: bool = True,
) -> list[Video]:
    """The embedded surveillance videos of ``split`` as a ``list[Video]`` (wrap it in `ClipDataset`).

    Defaults: 6 training and 6 test videos of 40 frames at 128x160 px (H, W); test video ``i``
    holds the event ``EVENT_ORDER[i % 6]``. Training videos carry no masks (``has_masks`` is
    False, all labels 0); test videos carry masks, labels and kinds. With ``cache`` the videos
    are rendered once into ``adlearn.cache.cache_dir()`` (built in a temporary folder renamed
    into place when complete) and memory-mapped from there.
    """
    n_videos = DEFAULT_VIDEOS.get(split, 1) if n_videos is None else int(n_videos)
    n_frames = DEFAULT_FRAMES if n_frames is None else int(n_frames)
    size = (int(size[0]), int(size[1])) if not isinstance(size, int) else (int(size), int(size))
    _check(split, n_videos, n_frames, size)
    seed = int(seed)
    if not cache:
        return _as_videos(generate_videos(split, seed, n_videos, n_frames, size), split)
    key = f"surveillance-v{GENERATOR_VERSION}-{size[0]}x{size[1]}-seed{seed}-{split}{n_videos}x{n_frames}"
    final = cache_dir() / key
    if not (final / COMPLETE_NAME).is_file():
        _build(final, split, seed, n_videos, n_frames, size)
    return _as_videos(_read(final), split)


def _build(final: Path, split: str, seed: int, n_videos: int, n_frames: int, size: tuple[int, int]) -> None:
    if final.exists():  # an interrupted older copy: start again
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(final)  # temporary folders of generating processes that no longer run
    building = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    building.mkdir()
    try:
        _write(building, generate_videos(split, seed, n_videos, n_frames, size))
        arguments = {"generator_version": GENERATOR_VERSION, "split": split, "seed": seed, "size": list(size)}
        arguments.update(n_videos=n_videos, n_frames=n_frames)
        (building / COMPLETE_NAME).write_text(json.dumps(arguments, sort_keys=True))
        try:
            os.rename(building, final)
        except OSError:
            if not (final / COMPLETE_NAME).is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


__all__ = [
    "EVENTS",
    "EVENT_ORDER",
    "background",
    "generate_videos",
    "plan_video",
    "render_frame",
    "render_video",
    "synthetic_surveillance",
]
