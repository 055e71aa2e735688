"""Evaluation metrics for visual anomaly detection, written from first principles.

A model gives every test image a *score* (how anomalous it looks) and, for localising models, an
*anomaly map* (one score per pixel). An inspector on a factory line turns scores into decisions
with a threshold ``t``: a part with ``score >= t`` is rejected. Every metric here describes how
good those decisions can be, either for one ``t`` or over all of them.

Image level (one score per image, label 0 = good, 1 = defective)
------------------------------------------------------------------
* **ROC curve** — for each threshold ``t``::

      TPR(t) = #{defective parts rejected} / #{defective parts}     (defects caught)
      FPR(t) = #{good parts rejected}      / #{good parts}          (false alarms)

* **AUROC** — the area under that curve. It equals the probability that a randomly drawn
  defective part scores higher than a randomly drawn good part, ties counting one half
  (the Mann–Whitney U statistic divided by ``n_pos * n_neg``)::

      AUROC = P(s_defect > s_good) + 0.5 * P(s_defect == s_good)

  1.0: some threshold separates good from bad perfectly; 0.5: the score is a coin flip.
  It says nothing about *which* threshold to use.

* **F1-max** — F1 = 2·precision·recall / (precision + recall) is the harmonic mean of "of the
  parts I rejected, how many were bad" and "of the bad parts, how many did I reject".
  F1-max is the best F1 over all thresholds, reported with the threshold that achieves it: a
  data-driven operating point (optimistic, because it is chosen on the test set itself).

Pixel level (one score per pixel; ground-truth masks, 1 = defect pixel)
-------------------------------------------------------------------------
* **Pixel AUROC / pixel F1-max** — the same metrics with every pixel of every test image treated
  as one sample. Because defects cover only a few percent of the pixels, pixel AUROC is dominated
  by large defects and is usually very high (0.95+) even for mediocre models.

* **AUPRO** (area under the per-region-overlap curve, Bergmann et al., MVTec AD). It gives each
  connected defect *region* the same weight, whatever its size — a hairline scratch counts as
  much as a big stain. For a threshold ``t``::

      PRO(t) = mean over regions r of  #{pixels of r with score >= t} / #{pixels of r}
      FPR(t) = #{normal pixels with score >= t} / #{normal pixels}

  where the normal pixels are all pixels outside every mask, over all test images (good images
  included). AUPRO integrates PRO over FPR from 0 to ``fpr_limit`` (0.3 by convention: beyond 30 %
  false-alarm pixels a segmentation is useless) and divides by ``fpr_limit`` so that a perfect
  model scores 1.0.

  Regions are the 8-connected components of each image's mask (diagonal neighbours join),
  as the MVTec AD reference evaluation labels them (``scipy.ndimage.label`` with a full 3×3
  structuring element). ``connectivity=4`` is available for comparison.

Video level (one score per frame; videos of consecutive frames)
-----------------------------------------------------------------
* **Frame AUROC, micro** — every test frame of every video pooled, then AUROC (the convention of
  most video anomaly detection papers, AI-VAD's included).
* **Frame AUROC, macro** — AUROC within each video, then the mean over videos: a model whose score
  drifts from one video to another (lighting, crowd size) is not rewarded for it. A video whose
  frames are all normal (or all anomalous) has no AUROC of its own and is left out, by name, with a
  warning.
* **Frame AUROC per kind** — the frames of one kind of anomaly against all normal frames.
* **Region AUROC** (where pixel masks exist) — does the model point at the right *object*? Every
  predicted region (a box with a score) is a positive when its box overlaps the bounding box of a
  ground-truth region (an 8-connected component of the frame's mask) with IoU ≥ 0.1 (the matching
  of Ramachandra & Jones's region-based detection criterion, WACV 2020), else a negative. A
  ground-truth region that no box matches is a positive the model scored below everything (−∞), so
  missed objects cost as much as low-scored ones. AUROC over all those samples.

How the curves are computed (exactly)
-------------------------------------
All curves here are *exact*: the scores are sorted once, and every distinct score value is a
threshold. Walking down the sorted list, the counts of positives / negatives / region pixels
above the threshold are cumulative sums, so a whole curve costs one sort (O(n log n)) and a few
vectorised passes — about a second for 60 images of 256×256 pixels. Tied scores form one block:
all tied samples cross the threshold together, which draws a straight (diagonal) segment
between two curve points and is exactly where the "ties count one half" of AUROC comes from.
The areas are trapezoid sums. ``aupro(..., num_thresholds=k)`` instead evaluates ``k`` evenly
spaced thresholds (the binned approximation other libraries use), to show how close it gets.

Score normalisation
-------------------
Raw scores have model-specific scales (a Mahalanobis distance, a negative log-likelihood, ...).
:func:`min_max_normalize` maps ``[min, max]`` of the scores seen on normal data to ``[0, 1]``;
:func:`normalize_with_threshold` shifts that scale so that a chosen threshold lands on 0.5 (the
convention anomalib uses, so "0.5" always means "the decision boundary"). :class:`MinMaxNormalizer`
stores the statistics so they can be fitted once and applied to new scores.

Inputs may be NumPy arrays, torch tensors (on any device) or lists; results are Python floats.
This module needs only NumPy (and SciPy for the connected components of AUPRO).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "roc_curve",
    "f1_max",
    "pro_curve",
    "aupro",
    "min_max_normalize",
    "normalize_with_threshold",
    "MinMaxNormalizer",
    "compute_all",
    "mask_f1",
    "threshold_for_false_alarm_rate",
    "threshold_from_quantile",
    "metrics_at_threshold",
]

ArrayLike = Any  # np.ndarray | torch.Tensor | sequence of numbers


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """NumPy view/copy of a NumPy array, torch tensor (any device, with grad) or list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor; no torch import needed
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """Scores as float64 (exact for float32 inputs, so ties are preserved); NaN is an error."""
    s = _to_numpy(scores).astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError(
            f"{name} contain {int(np.isnan(s).sum())} NaN value(s); a NaN score cannot be ranked "
            "(check the model's output, e.g. a division by zero or an exploding loss)"
        )
    return s


def _as_binary(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    """Labels/masks as a bool array; anything other than 0/1 is an error (not silently rounded)."""
    y = _to_numpy(labels)
    if y.dtype == bool:
        return y
    values = np.unique(y)
    if not np.isin(values, (0, 1)).all():
        odd = values[~np.isin(values, (0, 1))][:3]
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomalous); got values like "
            f"{odd.tolist()} (binarize first, e.g. mask > 0.5)"
        )
    return y.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape; got {a_name} {tuple(a.shape)} "
            f"and {b_name} {tuple(b.shape)}"
        )


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,) labels and (N,) scores, validated and flattened."""
    y, s = _as_binary(labels, "labels"), _as_scores(scores, "scores")
    _check_same_shape(y, s, "labels", "scores")
    return y.ravel(), s.ravel()


def _squeeze_channel(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W), and a single (H, W) map -> (1, H, W)."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 2:
        return x[None]
    return x


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) bool masks and (N, H, W) float64 maps, validated."""
    m = _squeeze_channel(_as_binary(masks, "masks"))
    a = _squeeze_channel(_as_scores(maps, "maps"))
    _check_same_shape(m, a, "masks", "maps")
    if m.ndim != 3:
        raise ValueError(f"masks and maps must have shape (N, H, W); got {tuple(m.shape)}")
    return m, a


def _require_both_classes(y: np.ndarray, what: str, unit: str) -> None:
    """Clear error when a ranking metric gets only one class."""
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = 0 if n_pos == 0 else 1
        raise ValueError(
            f"{what} needs both normal and anomalous {unit}; got only label {only}"
            + (" (no defect pixels in the masks)" if unit == "pixels" and only == 0 else "")
        )


# --------------------------------------------------------------------------------------------
# The shared core: one sort, then cumulative counts at every distinct score
# --------------------------------------------------------------------------------------------


@dataclass
class _Ranking:
    """Samples sorted by decreasing score, grouped into blocks of equal score.

    ``order[i]`` is the index of the i-th highest score; ``block_ends[k]`` is the position (in
    sorted order) of the last sample of the k-th distinct score, so ``block_ends[k] + 1`` samples
    score ``>= thresholds[k]``. Thresholds are decreasing.
    """

    order: np.ndarray  # (n,) int
    block_ends: np.ndarray  # (k,) int, k = number of distinct scores
    thresholds: np.ndarray  # (k,) float64, decreasing

    def cumulative(self, values: np.ndarray) -> np.ndarray:
        """For each threshold, the sum of ``values`` over samples scoring ``>= threshold``."""
        return np.cumsum(values[self.order])[self.block_ends]  # (k,)

    @property
    def n_above(self) -> np.ndarray:
        """For each threshold, how many samples score ``>= threshold``."""
        return self.block_ends + 1  # (k,)


def _rank(scores: np.ndarray) -> _Ranking:
    """Sort once (the O(n log n) step every curve shares)."""
    scores = scores.ravel()
    order = np.argsort(scores)[::-1]  # decreasing; the order inside a tie block is irrelevant
    sorted_scores = scores[order]
    # a block ends where the next score differs, and at the very end
    block_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    block_ends = np.append(block_ends, scores.size - 1)
    return _Ranking(order, block_ends, sorted_scores[block_ends])


def _positive_counts(y: np.ndarray, ranking: _Ranking) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive counts (int64) at every threshold, both starting from 0."""
    tps = ranking.cumulative(y.astype(np.int64))  # (k,) positives scoring >= threshold
    fps = ranking.n_above - tps  # (k,) the rest of what scores >= threshold is negative
    zero = np.zeros(1, dtype=np.int64)  # the point "threshold above every score"
    return np.concatenate([zero, tps]), np.concatenate([zero, fps])


def _auroc_from_counts(tps: np.ndarray, fps: np.ndarray) -> float:
    """Trapezoid area under the (fps, tps) staircase, in exact integer arithmetic.

    Each step adds a trapezoid of width Δfp and mean height (tp_prev + tp)/2. Twice its area is
    the integer Δfp·(tp_prev + tp); the sum of those is 2·U (Mann–Whitney), so no rounding
    happens before the final division. A tie block containing both classes gives a trapezoid,
    i.e. half credit for each tied (positive, negative) pair.
    """
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    twice_u = np.sum(np.diff(fps) * (tps[1:] + tps[:-1]))  # int64: at most 2·n_pos·n_neg
    return float(twice_u) / (2.0 * n_pos * n_neg)


def _f1_from_counts(tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Best F1 over thresholds (``tps``/``fps`` without the leading zero) and its threshold.

    F1 = 2·P·R/(P+R) simplifies to 2·TP / (#predicted positive + #actual positive), a ratio of
    integers, so equal F1 values are bit-identical floats and ties are broken deterministically:
    the *lowest* such threshold wins (the ``argmax`` convention over increasing thresholds that
    scikit-learn's precision–recall curve and anomalib's F1Max use).
    """
    n_pos = tps[-1]
    f1 = 2.0 * tps / (tps + fps + n_pos)  # (k,) thresholds are decreasing
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # last maximum = lowest threshold
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------------------------
# ROC / AUROC / F1
# --------------------------------------------------------------------------------------------


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve: one point per distinct score, plus the starting point (0, 0).

    Args:
        labels: (N,) 0 = normal, 1 = anomalous (any shape, matching ``scores``).
        scores: (N,) higher = more anomalous.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays of length ``k + 1``. Point ``i`` is what you get
        by rejecting everything with ``score >= thresholds[i]``; ``thresholds`` is decreasing and
        starts with ``inf`` (reject nothing). Same convention as
        ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    y, s = _image_inputs(labels, scores)
    _require_both_classes(y, "a ROC curve", "samples")
    ranking = _rank(s)
    tps, fps = _positive_counts(y, ranking)
    thresholds = np.concatenate([[np.inf], ranking.thresholds])
    return fps / fps[-1], tps / tps[-1], thresholds


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level AUROC: P(defective image scores higher than good image), ties count 1/2.

    Args:
        labels: (N,) 0 = normal, 1 = anomalous.
        scores: (N,) image anomaly scores.
    """
    y, s = _image_inputs(labels, scores)
    _require_both_classes(y, "AUROC", "samples")
    return _auroc_from_counts(*_positive_counts(y, _rank(s)))


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC: every pixel of every image is one sample.

    Args:
        masks: (N, H, W) ground truth, 1 = defect pixel.
        maps: (N, H, W) anomaly maps.
    """
    m, a = _pixel_inputs(masks, maps)
    _require_both_classes(m, "pixel AUROC", "pixels")
    return _auroc_from_counts(*_positive_counts(m.ravel(), _rank(a)))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Maximum F1 over all thresholds, and the threshold achieving it.

    A sample counts as predicted anomalous when ``score >= threshold``. Among thresholds with
    the same maximal F1 the lowest one is returned.

    Args:
        labels: (N,) 0 = normal, 1 = anomalous (or (N, H, W) masks for pixel F1).
        scores: (N,) scores (or (N, H, W) maps).

    Returns:
        ``(f1, threshold)`` as Python floats.
    """
    y, s = _image_inputs(labels, scores)
    if not y.any():
        raise ValueError("F1 needs at least one anomalous sample; got only label 0")
    ranking = _rank(s)
    tps, fps = _positive_counts(y, ranking)
    return _f1_from_counts(tps[1:], fps[1:], ranking.thresholds)


# --------------------------------------------------------------------------------------------
# PRO curve / AUPRO
# --------------------------------------------------------------------------------------------

_STRUCTURES = {
    8: np.ones((3, 3), dtype=int),  # diagonal neighbours join a region (MVTec AD reference)
    4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=int),
}


def _label_regions(masks: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected defect regions, numbered 1..R across all images (0 = normal pixel).

    Regions never span two images: each image is labelled on its own and the ids are offset.
    """
    from scipy import ndimage  # imported here: only AUPRO needs SciPy

    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8; got {connectivity}")
    region_ids = np.zeros(masks.shape, dtype=np.int64)  # (N, H, W)
    n_regions = 0
    for i, mask in enumerate(masks):  # a loop over images, not pixels
        labelled, n = ndimage.label(mask, structure=_STRUCTURES[connectivity])
        region_ids[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += n
    return region_ids, n_regions


def _pro_weights(region_ids: np.ndarray, n_regions: int) -> np.ndarray:
    """Weight 1 / (R · |region|) for a region pixel, 0 for a normal pixel.

    PRO(t) is a mean over regions of per-region fractions, which is linear in the pixels: it is
    the sum of these weights over the pixels scoring >= t. That is what lets one cumulative sum
    produce the PRO of every threshold at once.
    """
    ids = region_ids.ravel()
    sizes = np.bincount(ids, minlength=n_regions + 1).astype(np.float64)  # sizes[0]: normal px
    per_region = np.zeros(n_regions + 1)
    per_region[1:] = 1.0 / (n_regions * sizes[1:])
    return per_region[ids]  # (N·H·W,)


def _pro_curve_exact(
    normal: np.ndarray, weights: np.ndarray, ranking: _Ranking
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fp = ranking.cumulative(normal.astype(np.int64))  # (k,) normal pixels >= threshold
    fpr = np.concatenate([[0.0], fp / normal.sum()])
    pro = np.concatenate([[0.0], ranking.cumulative(weights)])
    # a float64 running sum of ~1e6 weights can overshoot 1 by ~1e-12
    pro = np.minimum(pro, 1.0)
    return fpr, pro, np.concatenate([[np.inf], ranking.thresholds])


def _pro_curve_binned(
    scores: np.ndarray, normal: np.ndarray, weights: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The approximation: ``num_thresholds`` evenly spaced thresholds between min and max."""
    thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)  # increasing
    # bin j holds the scores in [t_j, t_j+1); a pixel is >= t_j exactly when its bin is >= j
    bins = np.searchsorted(thresholds, scores, side="right") - 1
    fp_per_bin = np.bincount(bins, weights=normal, minlength=num_thresholds)
    pro_per_bin = np.bincount(bins, weights=weights, minlength=num_thresholds)
    # reversed cumulative sums = totals over bins >= j, listed from the highest threshold down
    fp = np.cumsum(fp_per_bin[::-1])
    pro = np.minimum(np.cumsum(pro_per_bin[::-1]), 1.0)
    fpr = np.concatenate([[0.0], fp / normal.sum()])
    return fpr, np.concatenate([[0.0], pro]), np.concatenate([[np.inf], thresholds[::-1]])


def pro_curve(
    masks: ArrayLike,
    maps: ArrayLike,
    num_thresholds: int | None = None,
    connectivity: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region-overlap curve: ``(fpr, pro, thresholds)``, thresholds decreasing from ``inf``.

    Args:
        masks: (N, H, W) ground truth, 1 = defect pixel.
        maps: (N, H, W) anomaly maps.
        num_thresholds: ``None`` (default) = exact, every distinct score is a threshold;
            an int = that many evenly spaced thresholds between the lowest and highest score.
        connectivity: 8 (default, MVTec AD reference) or 4 — which neighbours join a region.

    Raises:
        ValueError: when there are no anomalous regions or no normal pixels.
    """
    m, a = _pixel_inputs(masks, maps)
    region_ids, n_regions = _label_regions(m, connectivity)
    if n_regions == 0:
        raise ValueError("a PRO curve needs at least one anomalous region; the masks are empty")
    return _pro_curve_from(m, a, region_ids, n_regions, num_thresholds)


def _pro_curve_from(
    m: np.ndarray,
    a: np.ndarray,
    region_ids: np.ndarray,
    n_regions: int,
    num_thresholds: int | None,
    ranking: _Ranking | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    normal = ~m.ravel()  # (N·H·W,) every pixel outside any mask, good images included
    if not normal.any():
        raise ValueError("a PRO curve needs normal pixels for its FPR; every pixel is a defect")
    weights = _pro_weights(region_ids, n_regions)
    if num_thresholds is None:
        return _pro_curve_exact(normal, weights, ranking or _rank(a))
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2 (or None for exact); got {num_thresholds}")
    return _pro_curve_binned(a.ravel(), normal, weights, int(num_thresholds))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max]; ``x`` nondecreasing from 0.

    The curve is cut exactly at ``x_max`` by linear interpolation between the two points around
    it (the same straight segment the trapezoid rule assumes).
    """
    inside = np.searchsorted(x, x_max, side="right")  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, y_cut)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
    connectivity: int = 8,
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see the module docstring).

    Args:
        masks: (N, H, W) ground truth, 1 = defect pixel.
        maps: (N, H, W) anomaly maps.
        fpr_limit: integrate PRO over FPR in ``[0, fpr_limit]``; the result is divided by it.
        num_thresholds: ``None`` = exact (default); an int = binned approximation.
        connectivity: 8 (default, as the MVTec AD reference) or 4.

    Returns:
        AUPRO in [0, 1]; ``nan`` (with a warning) when the masks contain no anomalous region.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    m, a = _pixel_inputs(masks, maps)
    return _aupro_from(m, a, fpr_limit, num_thresholds, connectivity)


def _aupro_from(
    m: np.ndarray,
    a: np.ndarray,
    fpr_limit: float,
    num_thresholds: int | None,
    connectivity: int,
    ranking: _Ranking | None = None,
) -> float:
    region_ids, n_regions = _label_regions(m, connectivity)
    if n_regions == 0:
        warnings.warn(
            "AUPRO is undefined without anomalous regions in the masks; returning nan", RuntimeWarning, stacklevel=3
        )
        return float("nan")
    fpr, pro, _ = _pro_curve_from(m, a, region_ids, n_regions, num_thresholds, ranking)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------------------------
# Score normalisation
# --------------------------------------------------------------------------------------------


def _arithmetic(scores: ArrayLike) -> Any:
    """Tensors and arrays stay as they are (so the output type matches); the rest -> float64."""
    if hasattr(scores, "detach") or isinstance(scores, np.ndarray):
        return scores
    return np.asarray(scores, dtype=np.float64)


def _check_span(min_value: float, max_value: float) -> float:
    span = float(max_value) - float(min_value)
    if not span > 0:
        raise ValueError(
            f"max_value must be greater than min_value; got min {min_value}, max {max_value} "
            "(were all the scores used for fitting identical?)"
        )
    return span


def min_max_normalize(scores: ArrayLike, min_value: float, max_value: float, clip: bool = True) -> Any:
    """``(scores - min) / (max - min)``: ``min -> 0``, ``max -> 1``, clipped to [0, 1] by default.

    ``min``/``max`` are usually taken from normal (validation) scores, so unseen test scores can
    fall outside and are clipped. Returns the same kind of object it was given (a tensor stays a
    tensor, an array an array).
    """
    span = _check_span(min_value, max_value)
    out = (_arithmetic(scores) - float(min_value)) / span
    return out.clip(0.0, 1.0) if clip else out


def normalize_with_threshold(
    scores: ArrayLike, threshold: float, min_value: float, max_value: float, clip: bool = True
) -> Any:
    """``(scores - threshold) / (max - min) + 0.5``: the threshold maps to exactly 0.5.

    This is the min–max scale shifted so the decision boundary sits at 0.5 (anomalib's
    convention): ``normalized >= 0.5`` is the same decision as ``score >= threshold``, for any
    model. The spread is the same as plain min–max; clipping to [0, 1] keeps that decision intact
    because 0.5 is inside the interval.
    """
    span = _check_span(min_value, max_value)
    out = (_arithmetic(scores) - float(threshold)) / span + 0.5
    return out.clip(0.0, 1.0) if clip else out


@dataclass
class MinMaxNormalizer:
    """Remembers ``min``/``max`` (and optionally a threshold) of fitted scores and applies them.

    >>> norm = MinMaxNormalizer().fit(val_scores)            # val_scores: scores of normal images
    >>> norm(test_scores)                                     # in [0, 1]
    >>> norm = MinMaxNormalizer().fit(val_scores, threshold=t)
    >>> norm(test_scores) >= 0.5                              # same decision as test_scores >= t

    Image scores and anomaly maps can share one normalizer (fit it on both) or use one each.
    """

    min_value: float | None = None
    max_value: float | None = None
    threshold: float | None = None

    def fit(self, scores: ArrayLike, threshold: float | None = None) -> MinMaxNormalizer:
        s = _as_scores(scores)
        if s.size == 0:
            raise ValueError("cannot fit a MinMaxNormalizer on zero scores")
        self.min_value, self.max_value = float(s.min()), float(s.max())
        _check_span(self.min_value, self.max_value)
        self.threshold = None if threshold is None else float(threshold)
        return self

    def transform(self, scores: ArrayLike) -> Any:
        if self.min_value is None or self.max_value is None:
            raise RuntimeError("MinMaxNormalizer is not fitted; call fit(scores) first")
        if self.threshold is None:
            return min_max_normalize(scores, self.min_value, self.max_value)
        return normalize_with_threshold(scores, self.threshold, self.min_value, self.max_value)

    __call__ = transform

    def fit_transform(self, scores: ArrayLike, threshold: float | None = None) -> Any:
        return self.fit(scores, threshold).transform(scores)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def compute_all(
    labels: ArrayLike,
    scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """All standard metrics in one dict (pixel metrics are ``None`` without masks and maps).

    Keys: ``image_auroc, image_f1max, image_f1max_threshold, pixel_auroc, pixel_aupro,
    pixel_f1max``. The pixel scores are sorted once and shared by the three pixel metrics.
    """
    f1, f1_threshold = f1_max(labels, scores)
    results: dict[str, float | None] = {
        "image_auroc": image_auroc(labels, scores),
        "image_f1max": f1,
        "image_f1max_threshold": f1_threshold,
        "pixel_auroc": None,
        "pixel_aupro": None,
        "pixel_f1max": None,
    }
    if masks is None or maps is None:
        return results

    m, a = _pixel_inputs(masks, maps)
    _require_both_classes(m, "pixel AUROC", "pixels")
    ranking = _rank(a)  # the one expensive sort
    tps, fps = _positive_counts(m.ravel(), ranking)
    results["pixel_auroc"] = _auroc_from_counts(tps, fps)
    results["pixel_f1max"] = _f1_from_counts(tps[1:], fps[1:], ranking.thresholds)[0]
    results["pixel_aupro"] = _aupro_from(m, a, fpr_limit, None, 8, ranking)
    return results


def mask_f1(masks: ArrayLike, predicted: ArrayLike) -> float:
    """Pixel F1 of a binary segmentation the model chose itself (no threshold tuned on labels):
    2·TP / (2·TP + FP + FN) over every pixel of every image. (N, H, W), (N, H, W) bool -> float"""
    truth = np.asarray(masks).reshape(-1) > 0.5
    guess = np.asarray(predicted).reshape(-1).astype(bool)
    if truth.shape != guess.shape:
        raise ValueError(f"masks and predicted masks differ in size: {np.shape(masks)} vs {np.shape(predicted)}")
    if not truth.any():
        raise ValueError("pixel F1 needs at least one anomalous pixel in the masks")
    true_positives = int(np.sum(truth & guess))
    return 2.0 * true_positives / (2.0 * true_positives + int(np.sum(~truth & guess)) + int(np.sum(truth & ~guess)))


# --------------------------------------------------------------------------------------------
# Choosing a threshold without anomalies
# --------------------------------------------------------------------------------------------
# F1-max picks its threshold *on the test labels*: on a factory line nobody has them. What a line
# has is normal images the model never trained on. A target false-alarm rate r on them fixes the
# threshold; the test set then says what recall that threshold keeps.


def threshold_for_false_alarm_rate(normal_scores: ArrayLike, rate: float) -> float:
    """The lowest threshold that rejects at most a fraction ``rate`` of these normal scores.

    A part is rejected when ``score >= threshold``. With the scores sorted in decreasing order,
    ``s(1) >= ... >= s(n)``, and ``m = floor(rate * n)`` false alarms allowed, the threshold is the
    next float above ``s(m+1)``: exactly the ``m`` highest scores (fewer with ties) reach it, and any
    lower threshold would also reject ``s(m+1)``. ``rate >= 1`` returns the lowest score (reject all).

    Args:
        normal_scores: (N,) scores of normal images the model did not train on.
        rate: the false-alarm rate to allow, in [0, 1].
    """
    scores = _as_scores(normal_scores, "normal_scores").reshape(-1)
    if scores.size == 0:
        raise ValueError("threshold_for_false_alarm_rate needs at least one normal score")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate is a fraction of the normal images, in [0, 1]; got {rate}")
    allowed = int(np.floor(rate * scores.size + 1e-9))  # m false alarms
    if allowed >= scores.size:
        return float(scores.min())
    descending = np.sort(scores)[::-1]
    # The next number above s(m+1) in the scores' own precision: a float32 array compared with the
    # threshold (NumPy casts the Python float to float32) then also leaves s(m+1) below it.
    raw = _to_numpy(normal_scores)
    precision = raw.dtype.type if np.issubdtype(raw.dtype, np.floating) else np.float64
    return float(np.nextafter(precision(descending[allowed]), precision(np.inf)))


def threshold_from_quantile(normal_scores: ArrayLike, quantile: float) -> float:
    """The ``quantile`` of normal scores (e.g. 0.99), NumPy's linear interpolation: about a fraction
    ``1 - quantile`` of normal images score at or above it."""
    scores = _as_scores(normal_scores, "normal_scores").reshape(-1)
    if scores.size == 0:
        raise ValueError("threshold_from_quantile needs at least one normal score")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    return float(np.quantile(scores, quantile))


def metrics_at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Image-level decisions at one threshold (reject when ``score >= threshold``).

    Returns ``recall`` (anomalous images rejected / anomalous images), ``false_alarm_rate`` (normal
    images rejected / normal images), ``precision`` (anomalous among rejected; 1.0 when nothing is
    rejected) and ``f1``.
    """
    y, s = _image_inputs(labels, scores)
    rejected = s >= threshold
    true_pos = int(np.sum(rejected & (y == 1)))
    false_pos = int(np.sum(rejected & (y == 0)))
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    recall = true_pos / n_pos if n_pos else float("nan")
    false_alarm = false_pos / n_neg if n_neg else float("nan")
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    f1 = 2.0 * true_pos / (2.0 * true_pos + false_pos + (n_pos - true_pos)) if n_pos else float("nan")
    return {"recall": recall, "false_alarm_rate": false_alarm, "precision": precision, "f1": f1}


# --------------------------------------------------------------------------------------------
# Video: frame-level and region-level metrics
# --------------------------------------------------------------------------------------------


def frame_auroc_micro(labels: ArrayLike, scores: ArrayLike) -> float:
    """Frame AUROC with every frame of every video pooled (labels, scores: (F,))."""
    return image_auroc(labels, scores)


def frame_auroc_macro(labels: ArrayLike, scores: ArrayLike, videos: ArrayLike) -> float:
    """Mean over videos of each video's frame AUROC; videos with one class are left out (warned, by name)."""
    y, s = _image_inputs(labels, scores)
    names = np.asarray(videos).ravel()
    if names.shape != y.shape:
        raise ValueError(f"videos must name each frame: {names.shape[0]} names for {y.shape[0]} frames")
    values, skipped = [], []
    for name in dict.fromkeys(names.tolist()):
        inside = names == name
        if y[inside].min() == y[inside].max():
            skipped.append(str(name))
            continue
        values.append(image_auroc(y[inside], s[inside]))
    if not values:
        raise ValueError("macro frame AUROC needs a video with both normal and anomalous frames; none has both")
    if skipped:
        warnings.warn(
            f"macro frame AUROC leaves out {len(skipped)} video(s) whose frames are all one class: "
            f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=2,
        )
    return float(np.mean(values))


def frame_auroc_per_kind(labels: ArrayLike, scores: ArrayLike, kinds: ArrayLike) -> dict[str, float]:
    """``{kind: AUROC}`` of each anomaly kind's frames against all normal frames (kind ``""`` = normal)."""
    y, s = _image_inputs(labels, scores)
    kinds = np.asarray(kinds).ravel()
    if kinds.shape != y.shape:
        raise ValueError(f"kinds must name each frame: {kinds.shape[0]} kinds for {y.shape[0]} frames")
    normal = y == 0
    results = {}
    for kind in sorted(set(kinds[~normal].tolist())):
        chosen = normal | (kinds == kind)
        results[str(kind)] = image_auroc(y[chosen], s[chosen])
    return results


def frame_auroc_table(labels: ArrayLike, kinds: ArrayLike, scores: dict[str, ArrayLike]) -> dict[str, dict[str, float]]:
    """An ablation table: for each named score (e.g. one attribute alone), ``{"all": micro AUROC, kind: AUROC}``
    (`frame_auroc_micro`, `frame_auroc_per_kind`); ``scores`` maps a row name to its (F,) frame scores."""
    return {
        name: {"all": frame_auroc_micro(labels, row), **frame_auroc_per_kind(labels, row, kinds)}
        for name, row in scores.items()
    }


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (n, 4) and b (m, 4), x1 y1 x2 y2 (x2, y2 exclusive) -> (n, m)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-12)


def mask_boxes(mask: ArrayLike) -> np.ndarray:
    """Bounding boxes (k, 4) x1 y1 x2 y2 of the 8-connected components of one mask (H, W)."""
    from scipy import ndimage

    ids, _ = ndimage.label(np.asarray(mask) > 0.5, structure=np.ones((3, 3)))
    slices = ndimage.find_objects(ids)
    return np.array([[x.start, y.start, x.stop, y.stop] for y, x in slices], dtype=float).reshape(-1, 4)


def region_auroc(masks, boxes, box_scores, iou_threshold: float = 0.1) -> float:
    """Region AUROC (see the module docstring) over frames with masks.

    Args:
        masks: per frame (H, W) ground truth (a sequence or an (F, H, W) array).
        boxes: per frame (n_f, 4) predicted boxes x1 y1 x2 y2. box_scores: per frame (n_f,).
        iou_threshold: the IoU a box needs with a ground-truth region to count as finding it.
    """
    if not (len(masks) == len(boxes) == len(box_scores)):
        raise ValueError(
            f"masks, boxes and box_scores must cover the same frames: {len(masks)}, {len(boxes)}, {len(box_scores)}"
        )
    labels, scores = [], []
    for mask, frame_boxes, frame_scores in zip(masks, boxes, box_scores):
        truth = mask_boxes(mask)
        predicted = np.asarray(_to_numpy(frame_boxes), dtype=float).reshape(-1, 4)
        predicted_scores = np.asarray(_to_numpy(frame_scores), dtype=float).reshape(-1)
        if len(predicted) != len(predicted_scores):
            raise ValueError(f"{len(predicted)} boxes but {len(predicted_scores)} box scores in a frame")
        iou = _box_iou(predicted, truth) if len(truth) and len(predicted) else np.zeros((len(predicted), len(truth)))
        matched = iou >= iou_threshold  # (n, k)
        labels += matched.any(axis=1).astype(int).tolist()
        scores += predicted_scores.tolist()
        missed = int((~matched.any(axis=0)).sum()) if len(truth) else 0
        labels += [1] * missed
        scores += [-np.inf] * missed
    labels, scores = np.array(labels, dtype=int), np.array(scores, dtype=float)
    _require_both_classes(labels, "region AUROC", "regions")
    finite = np.isfinite(scores)
    lowest = scores[finite].min() - 1.0 if finite.any() else 0.0
    return image_auroc(labels, np.where(finite, scores, lowest))
