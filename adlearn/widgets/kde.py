"""KDE widget: one Gaussian bump per training point, and how wide the bumps should be.

`GaussianKDE` estimates the density of normal features as the average of Gaussian bumps
N(x_i, h² Σ) on the training points (Σ: the data's covariance, h: Scott's factor N^(-1/(D+4))).
An anomaly is a sample where that density is low. The one knob is the bump width; this widget
multiplies Scott's factor by ``bandwidth`` (0.25× … 4×) on a 1-D or 2-D projection of the
features and shows the density curve / surface, where the test samples fall, and how well the
log-density separates normal from anomalous samples.

`GaussianKDE` always uses Scott's factor, so the widget scales it with `ScaledGaussianKDE`, a
subclass that fits as usual and then rescales the fitted kernel (see its docstring): the
component's behaviour is unchanged.

    result = kde_explore(train_2d, normal_2d, anomalous_2d, bandwidth=0.5)   # pure numbers
    kde_widget(train, test_normal, test_anomalous)                          # live, in Jupyter
    kde_static_figure(train, test_normal, test_anomalous, bandwidths=(0.25, 1, 4))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components import GaussianKDE
from adlearn.widgets.common import _as_numpy, _as_tensor, project_features, separation_auroc
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ScaledGaussianKDE", "kde_explore", "kde_widget", "kde_static_figure"]

COLORS = {"train": "0.5", "normal": "tab:blue", "anomalous": "tab:red"}
GRID_POINTS = {1: 400, 2: 80}  # evaluation grid per axis: smooth curves, affordable surfaces
KERNEL_MARGIN = 4.0  # the grid extends this many kernel std-devs past the data


class ScaledGaussianKDE(GaussianKDE):
    """`GaussianKDE` whose bandwidth factor is ``bandwidth_scale`` × Scott's factor.

    With kernel covariance H = (m·h)² Σ instead of h² Σ, the precision is P/m², so its Cholesky
    factor is L/m: the whitened data shrink by m and the normaliser ∏ diag L by m^D. Rescaling the
    fitted buffers by those amounts is exactly a KDE with factor m·h (``scipy.stats.gaussian_kde``
    with ``bw_method = m · N^(-1/(D+4))``). ``bandwidth_scale=1`` is `GaussianKDE` itself.
    """

    def __init__(
        self, dataset: torch.Tensor | None = None, *, bandwidth_scale: float = 1.0, chunk_elements: int = 2**22
    ) -> None:
        if not bandwidth_scale > 0:
            raise ValueError(f"bandwidth_scale must be > 0, got {bandwidth_scale}")
        super().__init__(chunk_elements=chunk_elements)
        self.bandwidth_scale = float(bandwidth_scale)
        if dataset is not None:
            self.fit(dataset)

    def fit(self, dataset: torch.Tensor) -> None:
        super().fit(dataset)
        scale = self.bandwidth_scale
        n_features = self.bw_transform.shape[0]
        self.bw_transform = self.bw_transform / scale  # L -> L / m
        self.dataset = self.dataset / scale  # x L -> x L / m
        self.norm = self.norm / scale**n_features  # ∏ diag(L / m) = ∏ diag(L) / m^D

    @staticmethod
    def scott_factor(n_points: int, n_features: int) -> float:
        """Scott's rule h = N^(-1/(D+4)), the factor `GaussianKDE` uses."""
        return n_points ** (-1.0 / (n_features + 4))


# ---------------------------------------------------------------------------------- compute
def _grid(
    points: np.ndarray, kernel_std: np.ndarray, grid_points: int, limits: tuple[tuple[float, float], ...] | None
) -> list[np.ndarray]:
    """One evenly spaced axis per feature, covering the points plus a few kernel widths."""
    if limits is None:
        low = points.min(axis=0) - KERNEL_MARGIN * kernel_std
        high = points.max(axis=0) + KERNEL_MARGIN * kernel_std
        limits = tuple(zip(low, high))
    return [np.linspace(lo, hi, grid_points) for lo, hi in limits]


def kde_explore(
    train, test_normal, test_anomalous, bandwidth: float = 1.0, grid_points: int | None = None, limits=None
) -> dict:
    """Fit a Gaussian KDE with ``bandwidth`` × Scott's factor on 1-D or 2-D features.

    Args:
        train: normal training features ``(N, D)`` with ``D`` = 1 or 2 (project wider features
            first, e.g. with `adlearn.widgets.common.project_features`).
        test_normal, test_anomalous: ``(M, D)`` samples to score.
        bandwidth: multiplier on Scott's factor (1 = `GaussianKDE`'s own choice).
        grid_points: evaluation grid size per axis (default 400 in 1-D, 80 in 2-D).
        limits: ``((low, high),)`` per axis; default: the data plus 4 kernel std-devs.

    Returns a dict: ``dims``, ``bandwidth``, ``factor`` (the bandwidth factor used),
    ``kernel_std (D,)``, ``grid`` (list of D axes), ``density`` on the grid (``(G,)`` or
    ``(G, G)`` indexed [y, x]), ``integral`` (Riemann sum of the density over the grid, ~1),
    ``log_density_{train,normal,anomalous}``, the points ``{train,normal,anomalous}`` and the
    ``auroc`` of the score −log p(x).
    """
    train_t = _as_tensor(train, "train").double()  # (N, D)
    normal_t = _as_tensor(test_normal, "test_normal").double()
    anomalous_t = _as_tensor(test_anomalous, "test_anomalous").double()
    num_points, dims = train_t.shape
    if dims not in (1, 2):
        raise ValueError(
            f"kde_explore draws 1-D or 2-D densities, got {dims} features: project "
            "them first (project_features(train, ..., n_components=2))"
        )

    kde = ScaledGaussianKDE(train_t, bandwidth_scale=bandwidth)
    factor = bandwidth * ScaledGaussianKDE.scott_factor(num_points, dims)
    data_std = _as_numpy(train_t.std(dim=0))  # (D,)
    kernel_std = factor * data_std  # (D,) bump width per axis

    everything = _as_numpy(torch.cat([train_t, normal_t, anomalous_t]))
    axes = _grid(everything, kernel_std, grid_points or GRID_POINTS[dims], limits)
    if dims == 1:
        queries = torch.from_numpy(axes[0])[:, None]  # (G, 1)
    else:
        xx, yy = np.meshgrid(axes[0], axes[1])  # (G, G) each, [y, x]
        queries = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1))  # (G², 2)
    density = _as_numpy(kde(queries)).reshape([axis.size for axis in axes[::-1]])
    cell = math.prod(float(axis[1] - axis[0]) for axis in axes)  # area of one grid cell

    result = {
        "dims": dims,
        "bandwidth": float(bandwidth),
        "factor": float(factor),
        "kernel_std": kernel_std,
        "grid": axes,
        "density": density,
        "integral": float(density.sum() * cell),
        "train": _as_numpy(train_t),
        "normal": _as_numpy(normal_t),
        "anomalous": _as_numpy(anomalous_t),
    }
    for name, features in (("train", train_t), ("normal", normal_t), ("anomalous", anomalous_t)):
        result[f"log_density_{name}"] = _as_numpy(kde.log_density(features))
    # Low density = anomalous, so the anomaly score is −log p(x).
    result["auroc"] = separation_auroc(-result["log_density_normal"], -result["log_density_anomalous"])
    return result


# ---------------------------------------------------------------------------------- panels
def _factor(bandwidth: float) -> str:
    """A bandwidth multiplier for a title: three significant digits (the log slider's 2^0.75 is
    1.68179…, shown as 1.68), with no trailing zeros (1, 0.25, 4)."""
    return f"{bandwidth:.3g}"


def _draw_density(ax: Axes, result: dict, title: str | None = None) -> None:
    """The density curve (1-D) or filled contours (2-D) with the samples on top."""
    if result["dims"] == 1:
        x = result["grid"][0]
        ax.plot(x, result["density"], color="k", lw=1.5, label="p(x)")
        floor = -0.04 * result["density"].max()
        for offset, name, marker in ((1, "train", "|"), (2, "normal", "o"), (3, "anomalous", "x")):
            points = result[name][:, 0]
            ax.scatter(
                points, np.full(points.shape, offset * floor), s=14, marker=marker, color=COLORS[name], label=name
            )
        ax.set_xlabel("feature (1-D projection)")
        ax.set_ylabel("density")
    else:
        x, y = result["grid"]
        ax.contourf(x, y, result["density"], levels=12, cmap="Greys")
        for name, marker in (("train", "."), ("normal", "o"), ("anomalous", "x")):
            points = result[name]
            ax.scatter(
                points[:, 0],
                points[:, 1],
                s=10 if name == "train" else 16,
                marker=marker,
                color=COLORS[name],
                label=name,
            )
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    ax.legend(fontsize="x-small", loc="upper right")
    ax.set_title(
        title
        or f"bandwidth {_factor(result['bandwidth'])}× Scott (h = {result['factor']:.3f}), "
        f"∫p ≈ {result['integral']:.2f}",
        fontsize="medium",
    )


def _draw_log_density_histogram(ax: Axes, result: dict) -> None:
    """log p(x) of normal vs anomalous test samples: anomalies should sit on the left."""
    normal, anomalous = result["log_density_normal"], result["log_density_anomalous"]
    bins = np.histogram_bin_edges(np.r_[normal, anomalous], bins=20)
    ax.hist(normal, bins=bins, alpha=0.6, color=COLORS["normal"], label="normal")
    ax.hist(anomalous, bins=bins, alpha=0.6, color=COLORS["anomalous"], label="anomalous")
    ax.set_xlabel("log p(x)")
    ax.set_ylabel("samples")
    # The axis shows log p(x) itself (anomalies on the left); the score −log p(x) only enters the AUROC.
    ax.set_title(f"log p(x); AUROC of the score −log p(x): {result['auroc']:.2f}", fontsize="medium")
    ax.legend(fontsize="small")


def _draw_kde(result: dict) -> Figure:
    """The widget's figure: density | log-density histograms."""
    fig = _new_figure(11, 4)
    density, histogram = fig.subplots(1, 2, width_ratios=[1.4, 1])
    _draw_density(density, result)
    _draw_log_density_histogram(histogram, result)
    return fig


# ---------------------------------------------------------------------------------- views
def _projections(train, test_normal, test_anomalous) -> dict[int, list[np.ndarray]]:
    """{1: [train, normal, anomalous] on 1 direction, 2: ... on 2 directions} (PCA of train)."""
    return {dims: project_features(train, test_normal, test_anomalous, n_components=dims) for dims in (1, 2)}


def kde_widget(train, test_normal, test_anomalous, bandwidth: float = 1.0, dims: int = 2) -> WidgetView:
    """Live view of the KDE on a 1-D or 2-D PCA projection of the features.

    Controls: ``bandwidth`` (log slider, 1/8× … 8× Scott's factor) and ``dims`` (1 or 2).
    """
    import ipywidgets as widgets

    projected = _projections(train, test_normal, test_anomalous)
    controls = {
        "bandwidth": widgets.FloatLogSlider(
            value=bandwidth, base=2, min=-3, max=3, step=0.25, description="× Scott", continuous_update=False
        ),
        "dims": widgets.ToggleButtons(options=[1, 2], value=dims, description="dimensions"),
    }

    def compute(bandwidth, dims):
        return kde_explore(*projected[dims], bandwidth=bandwidth)

    return WidgetView(controls, compute, _draw_kde, title="Gaussian kernel density estimate")


def kde_static_figure(train, test_normal, test_anomalous, bandwidths: tuple[float, ...] = (0.25, 1.0, 4.0)) -> Figure:
    """Small multiples for the book: one column per bandwidth multiplier; top row the 1-D
    density, bottom row the 2-D density, each titled with its AUROC."""
    projected = _projections(train, test_normal, test_anomalous)
    fig = _new_figure(4 * len(bandwidths), 7)
    axes = fig.subplots(2, len(bandwidths), squeeze=False)
    for column, bandwidth in enumerate(bandwidths):
        for row, dims in enumerate((1, 2)):
            result = kde_explore(*projected[dims], bandwidth=bandwidth)
            _draw_density(
                axes[row, column], result, title=f"{dims}-D, {_factor(bandwidth)}× Scott: AUROC {result['auroc']:.2f}"
            )
            if column or row:  # one legend is enough
                axes[row, column].get_legend().remove()
    return fig
