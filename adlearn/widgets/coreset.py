"""Coreset widget: which memory-bank rows k-center-greedy keeps, and how well they cover the rest.

PatchCore keeps only a fraction (``sampling_ratio``) of its training patches. A good subset leaves
no patch far from a kept one; the worst case is the **coverage radius**

    r(C) = max_i min_{c ∈ C} ‖x_i − c‖.

`KCenterGreedy` picks, again and again, the point farthest from everything picked so far, which
keeps r(C) within a factor 2 of the best possible. A uniformly random subset of the same size
leaves rare patches (the tails of the distribution — exactly where subtle anomalies hide)
uncovered. The widget shows both subsets over the whole bank (2-D PCA projection) and the radius
of each as the ratio grows.

    result = coreset_explore(bank, sampling_ratio=0.05)       # pure numbers
    curve = coverage_curve(bank, ratios=(0.01, 0.05, 0.2))     # radius vs ratio
    coreset_widget(bank)                                       # live, in Jupyter
    coreset_static_figure(bank, ratios=(0.01, 0.05, 0.2))      # for the book
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components.kcenter_greedy import KCenterGreedy, coverage_radius
from adlearn.widgets.common import _as_numpy, _as_tensor, project_features
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "kcenter_indices",
    "random_indices",
    "coreset_explore",
    "coverage_curve",
    "coreset_widget",
    "coreset_static_figure",
]

DEFAULT_RATIOS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
COLORS = {"kcenter": "tab:green", "random": "tab:orange"}


# ---------------------------------------------------------------------------------- compute
def _coreset_size(num_rows: int, sampling_ratio: float) -> int:
    """``int(N · ratio)`` as `KCenterGreedy`, but at least one row."""
    return max(1, int(num_rows * sampling_ratio))


def kcenter_indices(bank: torch.Tensor, size: int, seed: int = 0) -> list[int]:
    """The first ``size`` rows `KCenterGreedy` picks from ``bank (N, D)`` (its own projection rule)."""
    num_rows = bank.shape[0]
    # KCenterGreedy keeps int(N · ratio) rows; aim half a row above `size` so that floating-point
    # rounding (e.g. 100 · 0.29 = 28.999…) cannot drop one.
    ratio = min(1.0, (size + 0.5) / num_rows)
    sampler = KCenterGreedy(bank, sampling_ratio=ratio, random_state=seed)
    return sampler.select_coreset_idxs()


def random_indices(num_rows: int, size: int, seed: int = 0) -> list[int]:
    """``size`` distinct rows chosen uniformly at random (the baseline)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_rows, generator=generator)[:size].tolist()


def coreset_explore(bank, sampling_ratio: float = 0.05, seed: int = 0, projection=None) -> dict:
    """K-center-greedy vs random subset of ``bank (N, D)`` at one ``sampling_ratio``.

    Args:
        bank: the memory bank, one feature vector per row.
        sampling_ratio: kept share of the rows, in (0, 1].
        seed: seeds k-center's start point and the random subset.
        projection: optional precomputed 2-D coordinates ``(N, 2)`` for the picture (default:
            PCA of the bank; a 2-D bank is its own projection).

    Returns a dict: ``size``, ``kcenter_idxs`` / ``random_idxs`` (lists of row indices),
    ``kcenter_radius`` / ``random_radius`` (coverage radius in the *original* feature space),
    ``projection (N, 2)``.
    """
    bank_t = _as_tensor(bank, "bank")  # (N, D)
    if not 0 < sampling_ratio <= 1:
        raise ValueError(f"sampling_ratio must lie in (0, 1], got {sampling_ratio}")
    size = _coreset_size(bank_t.shape[0], sampling_ratio)
    kcenter = kcenter_indices(bank_t, size, seed)
    random = random_indices(bank_t.shape[0], size, seed)
    if projection is None:
        projection = project_features(bank_t, n_components=2)[0]
    return {
        "sampling_ratio": float(sampling_ratio),
        "size": size,
        "kcenter_idxs": kcenter,
        "random_idxs": random,
        "kcenter_radius": coverage_radius(bank_t, kcenter),
        "random_radius": coverage_radius(bank_t, random),
        "projection": _as_numpy(projection),
    }


def coverage_curve(bank, ratios=DEFAULT_RATIOS, seed: int = 0) -> dict:
    """Coverage radius of k-center-greedy and of a random subset at every ratio in ``ratios``.

    Greedy selection is incremental — the first m picks for a large ratio are exactly the picks
    for the smaller one (same start, same rule) — so one run at the largest ratio gives every
    prefix; likewise the random subsets are prefixes of one permutation (nested, like k-center's).

    Returns ``{"ratios", "sizes", "kcenter_radius", "random_radius"}`` as NumPy arrays.
    """
    bank_t = _as_tensor(bank, "bank")
    ratios = np.sort(np.asarray(ratios, dtype=float))
    sizes = np.array([_coreset_size(bank_t.shape[0], r) for r in ratios])
    kcenter = kcenter_indices(bank_t, int(sizes.max()), seed)
    random = random_indices(bank_t.shape[0], int(sizes.max()), seed)
    return {
        "ratios": ratios,
        "sizes": sizes,
        "kcenter_radius": np.array([coverage_radius(bank_t, kcenter[:m]) for m in sizes]),
        "random_radius": np.array([coverage_radius(bank_t, random[:m]) for m in sizes]),
    }


# ---------------------------------------------------------------------------------- panels
def _draw_subset(ax: Axes, result: dict, method: str, title: str | None = None) -> None:
    """The whole bank (grey) with the ``method``'s chosen rows on top."""
    points = result["projection"]
    chosen = points[result[f"{method}_idxs"]]
    ax.scatter(points[:, 0], points[:, 1], s=3, color="0.75", label=f"bank ({len(points)})")
    ax.scatter(chosen[:, 0], chosen[:, 1], s=14, color=COLORS[method], label=f"chosen ({len(chosen)})")
    name = "k-center greedy" if method == "kcenter" else "random"
    ax.set_title(title or f"{name}: radius {result[f'{method}_radius']:.2f}", fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="x-small", loc="upper right")


def _draw_curve(ax: Axes, curve: dict, current: float | None = None) -> None:
    """Coverage radius vs sampling ratio for both methods (lower is better)."""
    ax.plot(curve["ratios"], curve["kcenter_radius"], "o-", color=COLORS["kcenter"], label="k-center greedy")
    ax.plot(curve["ratios"], curve["random_radius"], "s-", color=COLORS["random"], label="random")
    if current is not None:
        ax.axvline(current, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("sampling ratio")
    ax.set_ylabel("coverage radius")
    ax.set_title("worst-covered row vs ratio", fontsize="medium")
    ax.legend(fontsize="small")


# ---------------------------------------------------------------------------------- views
def coreset_widget(bank, sampling_ratio: float = 0.05, ratios=DEFAULT_RATIOS, seed: int = 0) -> WidgetView:
    """Live view: move ``sampling_ratio`` and compare k-center greedy with a random subset.

    Controls: ``sampling_ratio`` (float slider over [min(ratios), max(ratios)]) and ``seed``.
    The radius-vs-ratio curve is computed once (for ``seed``) and the current ratio is marked.
    """
    import ipywidgets as widgets

    bank_t = _as_tensor(bank, "bank")
    projection = project_features(bank_t, n_components=2)[0]  # once: it does not change
    curve = coverage_curve(bank_t, ratios, seed)
    controls = {
        "sampling_ratio": widgets.FloatSlider(
            value=sampling_ratio,
            min=min(ratios),
            max=max(ratios),
            step=0.005,
            readout_format=".3f",
            description="ratio",
            continuous_update=False,
        ),
        "seed": widgets.IntSlider(value=seed, min=0, max=9, description="seed", continuous_update=False),
    }

    def compute(sampling_ratio, seed):
        return coreset_explore(bank_t, sampling_ratio, seed=seed, projection=projection)

    def draw(result):
        fig = _new_figure(13, 4)
        kcenter, random, radius = fig.subplots(1, 3)
        _draw_subset(kcenter, result, "kcenter")
        _draw_subset(random, result, "random")
        _draw_curve(radius, curve, current=result["sampling_ratio"])
        return fig

    return WidgetView(controls, compute, draw, title="Coreset: k-center greedy vs random subset")


def coreset_static_figure(bank, ratios=(0.01, 0.05, 0.2), seed: int = 0, curve_ratios=DEFAULT_RATIOS) -> Figure:
    """Small multiples for the book: one column per ratio (top: k-center, bottom: random), and
    a last column with the radius-vs-ratio curve."""
    bank_t = _as_tensor(bank, "bank")
    projection = project_features(bank_t, n_components=2)[0]
    fig = _new_figure(3.3 * (len(ratios) + 1), 6.4)
    axes = fig.subplots(2, len(ratios) + 1, squeeze=False)
    for column, ratio in enumerate(ratios):
        result = coreset_explore(bank_t, ratio, seed=seed, projection=projection)
        for row, method in enumerate(("kcenter", "random")):
            name = "k-center" if method == "kcenter" else "random"
            _draw_subset(
                axes[row, column],
                result,
                method,
                title=f"{name}, {ratio:g} ({result['size']}): r = {result[f'{method}_radius']:.2f}",
            )
    _draw_curve(axes[0, -1], coverage_curve(bank_t, curve_ratios, seed))
    axes[1, -1].set_visible(False)
    return fig
