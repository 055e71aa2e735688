"""The defect playground: paint a defect onto an image with the mouse, and watch models score it.

A participant picks a good test image, paints a scratch, a stain or a patch of foreign texture onto it,
and sees every fitted model's anomaly map and image score update side by side — each score against its
threshold (chosen on normal held-out images, as in the thresholds notebook), so the decision flips the
moment a model "sees" the defect.

Drawing uses **ipycanvas** (PyPI, ``pip install "adlearn[playground]"``): a canvas that both shows the
image and sends the kernel its mouse events. (ipyevents could send the events for an ``Image`` widget, but
the brush would then only appear after the kernel redraws the whole image; ipycanvas draws it at once.)

Like every widget here, three pieces:

* compute — `stroke_points` (a drag's points, densified), `paint` (a stroke applied to an ``(H, W, 3)``
  uint8 image: a colour, a texture patch, or the eraser), `score_image` (each model's score and map);
* the live view — `DefectPlayground` (canvas, controls, one map and score per model);
* a static figure for the book — `playground_static_figure` (the same models on a scripted stroke).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

MODES = ("colour", "texture", "eraser")


# ------------------------------------------------------------------------------------------- compute
def stroke_points(points: Sequence[tuple[float, float]], radius: float) -> list[tuple[float, float]]:
    """The points of a drag, with points added between consecutive ones every ``radius / 2`` pixels, so
    that a fast mouse still paints a continuous line of discs."""
    points = [(float(x), float(y)) for x, y in points]
    dense = points[:1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = max(1, int(np.ceil(np.hypot(x1 - x0, y1 - y0) / max(radius / 2.0, 0.5))))
        dense += [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(1, steps + 1)]
    return dense


def stroke_mask(shape: tuple[int, int], points: Sequence[tuple[float, float]], radius: float) -> np.ndarray:
    """(H, W) bool: the pixels within ``radius`` of any point (x = column, y = row, pixel centres)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for x, y in points:
        mask |= (cols - x) ** 2 + (rows - y) ** 2 <= radius**2
    return mask


def paint(
    image: np.ndarray,
    original: np.ndarray,
    points: Sequence[tuple[float, float]],
    radius: float,
    mode: str = "colour",
    colour: tuple[int, int, int] = (200, 30, 30),
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with one stroke: inside the discs of radius ``radius`` around
    ``points`` the pixels take ``colour``, the same pixels of ``texture`` (H, W, 3), or — the eraser —
    those of ``original``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if image.shape != original.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image and original must both be (H, W, 3); got {image.shape} and {original.shape}")
    mask = stroke_mask(image.shape[:2], stroke_points(points, radius), radius)
    out = image.copy()
    if mode == "colour":
        out[mask] = np.asarray(colour, dtype=np.uint8)
    elif mode == "texture":
        if texture is None or texture.shape != image.shape:
            raise ValueError(f"the texture mode needs a texture of the image's shape {image.shape}")
        out[mask] = texture[mask]
    else:
        out[mask] = original[mask]
    return out


def default_texture(shape: tuple[int, int, int]) -> np.ndarray:
    """A foreign texture to paint with: scikit-image's gravel photograph, resized to ``shape`` (uint8)."""
    from PIL import Image
    from skimage import data

    gravel = np.asarray(data.gravel())
    rgb = np.stack([gravel] * 3, axis=-1) if gravel.ndim == 2 else gravel[..., :3]
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0])))


def score_image(models: Mapping[str, object], image: np.ndarray) -> dict[str, dict]:
    """Each model's image score and anomaly map (resized to the image) for one (H, W, 3) uint8 image."""
    import torch
    import torch.nn.functional as F

    scores = {}
    for name, model in models.items():
        batch = model.transform(image)[None].to(model.device)  # (1, 3, h, w)
        with torch.no_grad():
            prediction = model.predict(batch).cpu()
        anomaly_map = None
        if prediction.anomaly_map is not None:
            resized = F.interpolate(prediction.anomaly_map[:, None].float(), size=image.shape[:2], mode="bilinear")
            anomaly_map = resized[0, 0].numpy()  # (H, W)
        scores[name] = {"score": float(prediction.pred_score[0]), "map": anomaly_map}
    return scores


def map_overlay(image: np.ndarray, anomaly_map: np.ndarray | None, vmin: float, vmax: float) -> np.ndarray:
    """The image with its anomaly map blended on top (jet colours, half opacity where the map is high)."""
    if anomaly_map is None:
        return image
    from matplotlib import colormaps

    scaled = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)  # (H, W) in [0, 1]
    colours = colormaps["jet"](scaled)[..., :3] * 255.0
    alpha = 0.6 * scaled[..., None]
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _verdict(name: str, score: float, threshold: float | None) -> str:
    if threshold is None:
        return f"{name}: score {score:.4g}"
    verdict = "DEFECT" if score >= threshold else "good"
    return f"{name}: score {score:.4g} / threshold {threshold:.4g} → {verdict}"


# ------------------------------------------------------------------------------------------- live view
class DefectPlayground:
    """Paint on ``image`` (H, W, 3) uint8 and watch ``models`` (``{name: fitted model}``) score it.

    ``thresholds``: ``{name: threshold}`` (e.g. `adlearn.metrics.threshold_for_false_alarm_rate` on normal
    held-out scores): each readout then says good or DEFECT. Each map is coloured on the range of the
    clean image's map, stretched to twice its spread, so what the paint adds stands out. ``.stroke(points)``
    paints programmatically (what the mouse does; the tests use it); ``.readouts`` holds the texts shown.
    """

    def __init__(
        self,
        image: np.ndarray,
        models: Mapping[str, object],
        thresholds: Mapping[str, float] | None = None,
        radius: int = 6,
        texture: np.ndarray | None = None,
    ) -> None:
        import ipywidgets as widgets
        from ipycanvas import Canvas

        self.original = np.ascontiguousarray(image, dtype=np.uint8)
        self.image = self.original.copy()
        self.models, self.thresholds = dict(models), dict(thresholds or {})
        self.texture = default_texture(self.original.shape) if texture is None else texture
        clean = score_image(self.models, self.original)
        self.ranges = {
            name: (float(r["map"].min()), float(2 * r["map"].max() - r["map"].min()))
            for name, r in clean.items()
            if r["map"] is not None
        }
        self.clean_scores = {name: r["score"] for name, r in clean.items()}
        self._points: list[tuple[float, float]] = []
        self.n_updates = 0

        height, width = self.original.shape[:2]
        self.canvas = Canvas(width=width, height=height, layout=widgets.Layout(width=f"{width}px"))
        self.controls = {
            "mode": widgets.ToggleButtons(options=list(MODES), value="colour", description="brush"),
            "radius": widgets.IntSlider(value=radius, min=1, max=max(2, width // 8), description="size"),
            "colour": widgets.ColorPicker(value="#c81e1e", description="colour"),
        }
        reset = widgets.Button(description="reset image")
        reset.on_click(lambda _: self.reset())
        self.map_images = {name: widgets.Image(format="png", width=width, height=height) for name in self.models}
        self.labels = {name: widgets.HTML() for name in self.models}
        panels = [widgets.VBox([self.labels[n], self.map_images[n]]) for n in self.models]
        self.widget = widgets.VBox(
            [
                widgets.HTML("<b>Defect playground</b>: drag on the image to paint"),
                widgets.HBox([self.controls["mode"], self.controls["radius"], self.controls["colour"], reset]),
                widgets.HBox([self.canvas, *panels]),
            ]
        )
        self.canvas.on_mouse_down(self._down)
        self.canvas.on_mouse_move(self._move)
        self.canvas.on_mouse_up(self._up)
        self._show(clean)

    # -- the mouse: points are collected while the button is down, the stroke is scored on release
    def _down(self, x: float, y: float) -> None:
        self._points = [(x, y)]
        self._dot(x, y)

    def _move(self, x: float, y: float) -> None:
        if self._points:
            self._points.append((x, y))
            self._dot(x, y)

    def _up(self, x: float, y: float) -> None:
        if self._points:
            points, self._points = [*self._points, (x, y)], []
            self.stroke(points)

    def _dot(self, x: float, y: float) -> None:
        self.canvas.fill_style = self.controls["colour"].value
        self.canvas.fill_circle(x, y, self.controls["radius"].value)  # instant feedback in the browser

    # -- painting and scoring
    def stroke(self, points: Sequence[tuple[float, float]]) -> dict[str, dict]:
        """Apply one stroke with the current controls, rescore, redraw; returns the new scores."""
        colour = self.controls["colour"].value.lstrip("#")
        self.image = paint(
            self.image,
            self.original,
            points,
            self.controls["radius"].value,
            mode=self.controls["mode"].value,
            colour=tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4)),
            texture=self.texture,
        )
        scores = score_image(self.models, self.image)
        self._show(scores)
        return scores

    def reset(self) -> None:
        self.image = self.original.copy()
        self._show(score_image(self.models, self.image))

    def _show(self, scores: dict[str, dict]) -> None:
        self.scores = scores
        self.canvas.put_image_data(self.image, 0, 0)
        for name, result in scores.items():
            vmin, vmax = self.ranges.get(name, (0.0, 1.0))
            self.map_images[name].value = _png(map_overlay(self.image, result["map"], vmin, vmax))
            self.labels[name].value = _verdict(name, result["score"], self.thresholds.get(name))
        self.n_updates += 1

    @property
    def readouts(self) -> dict[str, str]:
        return {name: label.value for name, label in self.labels.items()}

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ------------------------------------------------------------------------------------------- static figure
def playground_static_figure(
    image: np.ndarray,
    models: Mapping[str, object],
    strokes: Sequence[dict],
    thresholds: Mapping[str, float] | None = None,
):
    """The book's stand-in for the live view: the clean image and the image after ``strokes`` (each a
    dict of `paint`'s arguments: ``points``, ``radius``, ``mode``, ``colour``), then each model's map on
    both, titled with its score (and decision against ``thresholds``)."""
    from adlearn.widgets.view import _new_figure

    thresholds = dict(thresholds or {})
    painted = image.copy()
    for stroke in strokes:
        options = {k: v for k, v in stroke.items() if k not in ("points", "radius")}
        if options.get("mode") == "texture" and "texture" not in options:
            options["texture"] = default_texture(image.shape)
        painted = paint(painted, image, stroke["points"], stroke["radius"], **options)
    clean, dirty = score_image(models, image), score_image(models, painted)
    figure = _new_figure(3.0 * (1 + len(models)), 6.2)
    axes = figure.subplots(2, 1 + len(models), squeeze=False)
    for row, (picture, scores, label) in enumerate(((image, clean, "clean"), (painted, dirty, "painted"))):
        axes[row][0].imshow(picture)
        axes[row][0].set_title(f"{label} image", fontsize=9)
        for col, name in enumerate(models, start=1):
            result = clean[name]
            vmin = float(result["map"].min()) if result["map"] is not None else 0.0
            vmax = float(2 * result["map"].max() - vmin) if result["map"] is not None else 1.0
            axes[row][col].imshow(map_overlay(picture, scores[name]["map"], vmin, vmax))
            axes[row][col].set_title(_verdict(name, scores[name]["score"], thresholds.get(name)), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return figure
