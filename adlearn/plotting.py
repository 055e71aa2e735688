"""Figures and tables for looking at anomaly-detection results.

* :func:`anomaly_map_grid` — for a handful of test images: the image, its ground-truth defect
  outline, and the model's anomaly map laid over it. This is the figure to look at first: a good
  AUROC with heat in the wrong place (the background, the image border) is a model that learnt
  a shortcut.
* :func:`roc_figure` — image-level and pixel-level ROC curves with their AUROC.
* :func:`frame_strip` — consecutive frames of a video clip in a row, anomalous frames framed in red.
* :func:`draw_boxes` — images with their boxes outlined, coloured by score (region-level models).
* :func:`metrics_table` — a plain-text table of benchmark results for terminals and logs.

Figures are built with :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: they
render with the Agg (PNG) canvas whatever the display, never open a window, keep no global state
(so hundreds of figures in a benchmark loop do not leak), and a notebook shows a returned figure
exactly once. Every figure function returns the ``Figure`` and saves it when given ``path``.
Matplotlib is imported inside the functions so that importing :mod:`adlearn.metrics` (or this
module, for :func:`metrics_table` alone) stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adlearn.metrics import _pixel_inputs, _to_numpy, roc_curve

if TYPE_CHECKING:  # only for annotations; matplotlib is imported lazily
    from matplotlib.figure import Figure

__all__ = [
    "anomaly_map_grid",
    "roc_figure",
    "metrics_table",
    "denormalize",
    "frame_strip",
    "draw_boxes",
    "outline_mask",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MAX_CURVE_POINTS = 2000  # a pixel ROC has ~1 point per pixel; 2000 look identical on screen


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # lazy: matplotlib costs ~0.3 s to import

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)


def denormalize(images: Any, normalized: bool | None = None) -> np.ndarray:
    """(N, C, H, W) model inputs -> (N, H, W, C) float images in [0, 1] for display.

    Args:
        images: (N, 3, H, W) or (N, 1, H, W), tensor or array.
        normalized: ``True`` = ImageNet-normalized (undo ``(x - mean) / std``), ``False`` =
            already in [0, 1]; ``None`` = guess: values outside [0, 1] mean normalized (an
            ImageNet-normalized image almost always has negative values).
    """
    x = _to_numpy(images).astype(np.float64)
    if x.ndim == 3:  # a single image
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 3, H, W) or (N, 1, H, W); got {x.shape}")
    if normalized is None:
        normalized = bool(x.min() < 0.0 or x.max() > 1.0)
    if normalized:
        channels = x.shape[1]
        mean = np.asarray(IMAGENET_MEAN[:channels]).reshape(1, channels, 1, 1)
        std = np.asarray(IMAGENET_STD[:channels]).reshape(1, channels, 1, 1)
        x = x * std + mean
    return np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)  # (N, H, W, C)


def _squeeze(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W); anything else unchanged."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def _show_image(ax: Any, image: np.ndarray) -> None:
    """Show one (H, W, C) image without ticks."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def outline_mask(ax: Any, mask: np.ndarray, color: str = "red", linewidth: float = 1.0) -> None:
    """Draw the outline of a ground-truth mask ``(H, W)`` on ``ax`` (nothing for an empty mask: contour() warns)."""
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=color, linewidths=linewidth)


def _column_title(i: int, scores: np.ndarray | None, labels: np.ndarray | None) -> str:
    """E.g. "#3 · anomalous" over "score 0.82"."""
    first = f"#{i}" if labels is None else f"#{i} · {'anomalous' if labels[i] else 'normal'}"
    return first if scores is None else f"{first}\nscore {scores[i]:.3g}"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def anomaly_map_grid(
    images: Any,
    maps: Any,
    masks: Any | None = None,
    scores: Any | None = None,
    labels: Any | None = None,
    n: int = 8,
    title: str | None = None,
    path: str | Path | None = None,
    normalized: bool | None = None,
    alpha: float = 0.5,
) -> Figure:
    """Grid of the first ``n`` images: one column per image, one row per view.

    Rows: the image; the image with the ground-truth defect outlined in red (only when ``masks``
    is given); the image with the anomaly map as a heatmap on top. All heatmaps share one colour
    scale — the lowest to the highest value among the maps shown, written on the colour bar — so
    a "hot" image is hot compared with the others, not just within itself.

    Args:
        images: (N, 3, H, W) ImageNet-normalized or [0, 1] images (see ``normalized``).
        maps: (N, H, W) anomaly maps at the image resolution.
        masks: optional (N, H, W) ground-truth masks.
        scores: optional (N,) image scores, printed above each column.
        labels: optional (N,) 0/1 labels, printed above each column.
        n: how many images to show (the first ``n``).
        title: figure title.
        path: save the figure there (PNG/PDF/SVG by extension).
        normalized: see :func:`denormalize`; ``None`` guesses from the value range.
        alpha: opacity of the heatmap over the image.
    """
    shown = denormalize(images, normalized)[:n]  # (n, H, W, C)
    count = shown.shape[0]
    if count == 0:
        raise ValueError("anomaly_map_grid needs at least one image (got 0 images or n < 1)")
    heat = _squeeze(_to_numpy(maps).astype(np.float64))[:count]  # (n, H, W)
    if heat.shape != shown.shape[:3]:
        raise ValueError(
            f"maps must have shape (N, H, W) matching the images' {shown.shape[1:3]}; "
            f"got {tuple(_to_numpy(maps).shape)}"
        )
    gt = None if masks is None else _squeeze(_to_numpy(masks))[:count]
    score_values = None if scores is None else _to_numpy(scores).ravel()
    label_values = None if labels is None else _to_numpy(labels).ravel()

    vmin, vmax = float(heat.min()), float(heat.max())
    if vmax == vmin:  # constant maps: widen the zero-width scale so the value sits mid-bar
        vmin, vmax = vmin - 0.5, vmax + 0.5

    rows = ["image", "ground truth", "anomaly map"] if gt is not None else ["image", "anomaly map"]
    fig = _new_figure(width=2.0 * count + 1.0, height=2.1 * len(rows) + (0.4 if title else 0))
    axes = fig.subplots(len(rows), count, squeeze=False)  # (rows, count)
    heatmap = None
    for i in range(count):
        _show_image(axes[0, i], shown[i])
        if score_values is not None or label_values is not None:
            axes[0, i].set_title(_column_title(i, score_values, label_values), fontsize=9)
        if gt is not None:
            ax = axes[1, i]
            _show_image(ax, shown[i])
            outline_mask(ax, gt[i])
        ax = axes[-1, i]
        _show_image(ax, shown[i])
        heatmap = ax.imshow(heat[i], cmap="jet", alpha=alpha, vmin=vmin, vmax=vmax)
    for r, name in enumerate(rows):
        axes[r, 0].set_ylabel(name)

    # the bar gets its own opaque mappable (same norm and colours): the overlay's alpha would
    # wash it out
    from matplotlib.cm import ScalarMappable

    scale = ScalarMappable(norm=heatmap.norm, cmap=heatmap.get_cmap())
    colorbar = fig.colorbar(scale, ax=axes[-1, :].tolist(), shrink=0.9)
    colorbar.set_label(f"anomaly score\n(shared scale {vmin:.3g} – {vmax:.3g})", fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def _thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int = _MAX_CURVE_POINTS):
    """At most ``max_points`` points of a monotone curve, always keeping both ends."""
    if fpr.size <= max_points:
        return fpr, tpr
    keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
    return fpr[keep], tpr[keep]


def _plot_roc(ax: Any, fpr: np.ndarray, tpr: np.ndarray, auroc: float, what: str) -> None:
    fpr, tpr = _thin(fpr, tpr)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance (0.5)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        title=f"{what} ROC",
        xlabel="false-positive rate",
        ylabel="true-positive rate",
    )
    ax.legend(loc="lower right")


def _area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def roc_figure(
    labels: Any,
    scores: Any,
    masks: Any | None = None,
    maps: Any | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Image-level ROC curve, plus the pixel-level one when ``masks`` and ``maps`` are given.

    The AUROC in each legend is computed from every point of the exact curve; a pixel curve is
    drawn from at most 2000 of its points, which is indistinguishable on screen.

    Args:
        labels: (N,) 0/1 image labels.  scores: (N,) image scores.
        masks: optional (N, H, W) masks.  maps: optional (N, H, W) anomaly maps.
        path: save the figure there.
    """
    with_pixels = masks is not None and maps is not None
    fig = _new_figure(width=8.5 if with_pixels else 4.5, height=4.3)
    axes = fig.subplots(1, 2 if with_pixels else 1, squeeze=False)[0]
    fpr, tpr, _ = roc_curve(labels, scores)
    _plot_roc(axes[0], fpr, tpr, _area(fpr, tpr), "Image-level")
    if with_pixels:
        mask_values, map_values = _pixel_inputs(masks, maps)  # validated (N, H, W) pair
        fpr, tpr, _ = roc_curve(mask_values.ravel(), map_values.ravel())  # one sort of all pixels
        _plot_roc(axes[1], fpr, tpr, _area(fpr, tpr), "Pixel-level")
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------------------------

# column header -> (keys accepted in a result dict, format); the first key present wins
_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "model": (("model",), "s"),
    "category": (("category",), "s"),
    "image AUROC": (("image_auroc",), ".3f"),
    "pixel AUROC": (("pixel_auroc",), ".3f"),
    "AUPRO": (("pixel_aupro",), ".3f"),
    "F1": (("image_f1max",), ".3f"),
    "fit s": (("fit_seconds",), ".1f"),
    "predict s": (("predict_seconds",), ".2f"),
    "img/s": (("images_per_second",), ".1f"),
    "peak MB": (("peak_memory_mb",), ".0f"),
}
_MISSING = "—"


def frame_strip(
    frames: Any,
    labels: Any | None = None,
    masks: Any | None = None,
    titles: Sequence[str] | None = None,
    frame_width: float = 1.8,
    path: str | Path | None = None,
) -> Figure:
    """Consecutive video frames side by side, anomalous ones framed in red.

    Args:
        frames: ``(T, 3, H, W)`` floats in [0, 1] (a clip's ``"frames"``) or ``(T, H, W, 3)`` uint8
            (``Video.frame`` stacked); a list of either per frame works too.
        labels: optional ``(T,)`` 0/1 frame labels; anomalous frames get a red border and title.
        masks: optional ``(T, H, W)`` ground truth, outlined in red on each frame.
        titles: optional text over each frame (default: the frame's position, and its label).
        frame_width: inches per frame.
        path: save the figure there as well.
    """
    array = np.stack([_to_numpy(f) for f in frames]) if isinstance(frames, (list, tuple)) else _to_numpy(frames)
    if array.ndim != 4:
        raise ValueError(f"frames must be (T, 3, H, W) or (T, H, W, 3), got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)  # (T, H, W, C)
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    n, height, width = array.shape[:3]
    label_array = None if labels is None else _to_numpy(labels).reshape(-1).astype(int)
    mask_array = None if masks is None else _to_numpy(masks).reshape(n, height, width)
    for name, given in (("labels", label_array), ("masks", mask_array), ("titles", titles)):
        if given is not None and len(given) != n:
            raise ValueError(f"{name} has {len(given)} entries for {n} frames; give one per frame")
    fig = _new_figure(frame_width * n, frame_width * height / width + 0.45)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    for t, ax in enumerate(axes):
        _show_image(ax, np.clip(array[t], 0.0, 1.0))
        anomalous = label_array is not None and bool(label_array[t])
        if mask_array is not None:
            outline_mask(ax, mask_array[t] > 0.5, linewidth=0.8)
        if titles is not None:
            title = titles[t]
        else:
            title = f"t={t}" if label_array is None else f"t={t} · {'anomalous' if anomalous else 'normal'}"
        ax.set_title(title, fontsize=8, color="red" if anomalous else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor("red" if anomalous else "0.7")
            spine.set_linewidth(2.5 if anomalous else 0.5)
    _save(fig, path)
    return fig


def _flatten(result: Mapping[str, Any]) -> dict[str, Any]:
    """One level of nesting is flattened ({"metrics": {...}, "timing": {...}} works too)."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            flat.update({k: v for k, v in value.items() if k not in flat})
        else:
            flat[key] = value
    return flat


def _cell(row: Mapping[str, Any], keys: tuple[str, ...], fmt: str) -> str:
    value = next((row[k] for k in keys if row.get(k) is not None), None)
    if value is None:
        return _MISSING
    if fmt == "s":
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return _MISSING if math.isnan(number) else format(number, fmt)


def metrics_table(results: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """Aligned plain-text table, one row per result dict; missing values shown as "—".

    Columns: model, category, image AUROC, pixel AUROC, AUPRO, F1, fit s, predict s, img/s,
    peak MB. Keys follow :func:`adlearn.metrics.compute_all` (``image_auroc``, ``pixel_aupro``,
    ``image_f1max``, ...) plus ``model``, ``category``, ``fit_seconds``, ``predict_seconds``,
    ``images_per_second``, ``peak_memory_mb`` (the keys of ``adlearn.evaluate``); one level of
    nested dicts is flattened. Text columns are left-aligned, numbers right-aligned.
    """
    rows = [results] if isinstance(results, Mapping) else list(results)
    flat_rows = [_flatten(r) for r in rows]
    headers = list(_COLUMNS)
    cells = [[_cell(r, *_COLUMNS[h]) for h in headers] for r in flat_rows]
    widths = [max([len(h)] + [len(row[j]) for row in cells]) for j, h in enumerate(headers)]
    text_column = [_COLUMNS[h][1] == "s" for h in headers]

    def line(values: list[str]) -> str:
        padded = [v.ljust(w) if left else v.rjust(w) for v, w, left in zip(values, widths, text_column)]
        return "  ".join(padded).rstrip()

    separator = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), separator, *(line(row) for row in cells)])


def draw_boxes(
    images: Any,
    boxes: Sequence[Any],
    scores: Sequence[Any] | None = None,
    top: int | None = None,
    titles: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Images in a row, each with its boxes outlined (a region-level model's detections, or proposals).

    Args:
        images: (N, 3, H, W) model inputs (ImageNet-normalized or in [0, 1], as `denormalize` guesses).
        boxes: per image an (M, 4) tensor or array of ``x1, y1, x2, y2`` pixel boxes.
        scores: per image (M,) box scores: boxes are coloured by score (``inferno``, one scale for all
            images) and the highest-scoring box of each image is drawn last, thickest, with its score.
            Without scores every box is a thin cyan outline.
        top: draw only the ``top`` highest-scoring boxes of each image (all when None).
        titles: one title per image.
    """
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    pictures = denormalize(images)  # (N, H, W, C)
    if len(boxes) != len(pictures) or (scores is not None and len(scores) != len(pictures)):
        raise ValueError(
            f"draw_boxes needs one box list (and one score list) per image: {len(pictures)} images, "
            f"{len(boxes)} box lists, {'no' if scores is None else len(scores)} score lists"
        )
    boxes = [np.asarray(_to_numpy(b), dtype=np.float64).reshape(-1, 4) for b in boxes]
    scores = None if scores is None else [np.asarray(_to_numpy(s), dtype=np.float64).reshape(-1) for s in scores]
    low, high = 0.0, 1.0
    if scores is not None and any(len(s) for s in scores):
        every = np.concatenate([s for s in scores if len(s)])
        low, high = float(every.min()), float(every.max())
    fig = _new_figure(3.0 * len(pictures), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(pictures)))
    for i, (ax, picture, image_boxes) in enumerate(zip(axes, pictures, boxes)):
        _show_image(ax, picture)
        order = np.arange(len(image_boxes))
        if scores is not None:
            order = np.argsort(scores[i], kind="stable")  # ascending: the highest score on top
        if top is not None:
            order = order[-top:] if scores is not None else order[:top]
        for rank, j in enumerate(order):
            x1, y1, x2, y2 = image_boxes[j]
            best = scores is not None and rank == len(order) - 1
            colour = "cyan" if scores is None else colormaps["inferno"]((scores[i][j] - low) / max(high - low, 1e-12))
            # Pixel (r, c) spans [c - 0.5, c + 0.5] on imshow's axes: a box [x1, x2) is drawn from x1 - 0.5.
            ax.add_patch(
                Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=2.5 if best else 0.8)
            )
            if best:
                ax.text(x1, y1, f"{scores[i][j]:.3g}", color="white", fontsize=8, va="bottom", backgroundcolor="black")
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    _save(fig, path)
    return fig
