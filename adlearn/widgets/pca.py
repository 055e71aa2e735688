"""PCA widget: how many principal directions describe "normal", and what DFM's score sees.

Normal features crowd near a low-dimensional subspace. Keep the first ``k`` principal directions
V_k of the training features and score a sample by how far it is from that subspace — the
feature reconstruction error DFM uses:

    score(x) = ‖x − x̂‖²,     x̂ = μ + V_k V_kᵀ (x − μ)

Too few directions and normal samples reconstruct badly too; too many and the subspace also
reconstructs anomalies. The widget lets you move ``k`` (or the share of variance that decides it)
and watch the explained-variance curve, the first two principal coordinates, and the two score
histograms (normal vs anomalous) with their AUROC.

    result = pca_explore(train, test_normal, test_anomalous, n_components=8)   # pure numbers
    pca_widget(train, test_normal, test_anomalous)                             # live, in Jupyter
    pca_static_figure(train, test_normal, test_anomalous, settings=(1, 4, 16, 0.97))  # for the book
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components import PCA
from adlearn.widgets.common import _as_numpy, _as_tensor, histogram_bins, separation_auroc
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["pca_explore", "pca_reconstruction_error", "pca_widget", "pca_static_figure"]

COLORS = {"train": "0.6", "normal": "tab:blue", "anomalous": "tab:red"}


# ---------------------------------------------------------------------------------- compute
def pca_reconstruction_error(pca: PCA, features: torch.Tensor) -> torch.Tensor:
    """‖x − inverse_transform(transform(x))‖² per row of ``features (N, D)`` -> ``(N,)``."""
    reconstructed = pca.inverse_transform(pca.transform(features))  # (N, D)
    return (features - reconstructed).pow(2).sum(dim=1)


def pca_explore(train, test_normal, test_anomalous, n_components: int | float = 0.97) -> dict:
    """Fit adlearn's `PCA` on ``train (N, D)`` and describe what it keeps.

    Args:
        train: normal training features ``(N, D)``, ``D >= 2``.
        test_normal, test_anomalous: held-out features ``(M, D)`` to score.
        n_components: as `PCA`: an ``int`` (that many directions) or a ``float`` in (0, 1] (the
            fewest directions keeping that share of the variance).

    Returns a dict of NumPy arrays / numbers:
        ``explained_variance_ratio (r,)`` and ``cumulative_ratio (r,)`` of every direction
        (r = min(N, D)); ``k`` directions kept and the ``kept_ratio`` they explain;
        ``projection_{train,normal,anomalous}`` — coordinates on the first two directions;
        ``error_{train,normal,anomalous}`` — reconstruction errors with ``k`` directions;
        ``auroc`` — how well the error separates anomalous from normal test samples.
    """
    train_t = _as_tensor(train, "train")  # (N, D)
    normal_t = _as_tensor(test_normal, "test_normal")  # (M1, D)
    anomalous_t = _as_tensor(test_anomalous, "test_anomalous")  # (M2, D)
    num_samples, num_features = train_t.shape
    if num_features < 2:
        raise ValueError(f"pca_explore needs at least 2 features per sample, got shape {tuple(train_t.shape)}")

    # The whole spectrum: every direction PCA can find, to draw the explained-variance curve.
    full = PCA(n_components=min(num_samples, num_features)).fit(train_t)
    variance = full.singular_values.double().pow(2)  # (r,) ∝ variance per direction
    ratio = variance / variance.sum()  # (r,)
    cumulative = torch.cumsum(ratio, dim=0)  # (r,)

    # The model itself: k directions chosen by count or by share of variance.
    model = PCA(n_components=n_components).fit(train_t)
    k = int(model.num_components)

    result = {
        "n_components": n_components,
        "k": k,
        "kept_ratio": float(cumulative[k - 1]),
        "explained_variance_ratio": _as_numpy(ratio),
        "cumulative_ratio": _as_numpy(cumulative),
    }
    for name, features in (("train", train_t), ("normal", normal_t), ("anomalous", anomalous_t)):
        result[f"projection_{name}"] = _as_numpy(full.transform(features)[:, :2])  # (M, 2)
        result[f"error_{name}"] = _as_numpy(pca_reconstruction_error(model, features))  # (M,)
    result["auroc"] = separation_auroc(result["error_normal"], result["error_anomalous"])
    return result


# ---------------------------------------------------------------------------------- panels
def _draw_variance_curve(ax: Axes, result: dict, marks: list[int] | None = None) -> None:
    """Cumulative explained variance vs number of directions, with ``k`` (or ``marks``) marked."""
    cumulative = result["cumulative_ratio"]
    ks = np.arange(1, cumulative.size + 1)
    ax.bar(ks, result["explained_variance_ratio"], color="0.8", label="per direction")
    ax.plot(ks, cumulative, "-", color="k", lw=1.5, label="cumulative")
    for k in marks or [result["k"]]:
        ax.axvline(k, color="tab:green", lw=1, ls="--")
    ax.set_xlim(0.5, min(cumulative.size, max(marks or [result["k"]]) * 3 + 5) + 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of principal directions k")
    ax.set_ylabel("share of variance")
    ax.legend(loc="center right", fontsize="small")


def _draw_projection(ax: Axes, result: dict) -> None:
    """Training, normal-test and anomalous-test samples on the first two principal directions."""
    for name, marker in (("train", "."), ("normal", "o"), ("anomalous", "x")):
        points = result[f"projection_{name}"]
        ax.scatter(points[:, 0], points[:, 1], s=12, marker=marker, color=COLORS[name], label=f"{name} ({len(points)})")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title("first two principal directions", fontsize="medium")
    ax.legend(fontsize="small")


def _draw_error_histogram(ax: Axes, result: dict, title: str | None = None) -> None:
    """Reconstruction error (the DFM score) of normal vs anomalous test samples."""
    normal, anomalous = result["error_normal"], result["error_anomalous"]
    bins, log_scale = histogram_bins(normal, anomalous)
    ax.hist(normal, bins=bins, alpha=0.6, color=COLORS["normal"], label="normal")
    ax.hist(anomalous, bins=bins, alpha=0.6, color=COLORS["anomalous"], label="anomalous")
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel("reconstruction error ‖x − x̂‖²")
    ax.set_ylabel("samples")
    ax.set_title(title or f"k = {result['k']}: AUROC {result['auroc']:.2f}", fontsize="medium")
    ax.legend(fontsize="small")


def _draw_pca(result: dict) -> Figure:
    """The widget's figure: variance curve | 2-D projection | error histograms."""
    fig = _new_figure(12, 3.6)
    curve, projection, histogram = fig.subplots(1, 3)
    _draw_variance_curve(curve, result)
    curve.set_title(
        f"k = {result['k']} directions keep {100 * result['kept_ratio']:.1f} % of the variance", fontsize="medium"
    )
    _draw_projection(projection, result)
    _draw_error_histogram(histogram, result)
    return fig


# ---------------------------------------------------------------------------------- views
def pca_widget(train, test_normal, test_anomalous, n_components: int | float = 0.97) -> WidgetView:
    """Live view: choose ``k`` by count or by share of variance and watch the DFM score change.

    Controls: ``mode`` ("variance ratio" or "components"), ``variance_ratio`` (float slider),
    ``n_components`` (int slider). The slider that ``mode`` does not use is disabled.
    """
    import ipywidgets as widgets

    train_t = _as_tensor(train, "train")
    max_k = min(train_t.shape)
    by_ratio = isinstance(n_components, float)
    controls = {
        "mode": widgets.ToggleButtons(
            options=["variance ratio", "components"],
            value="variance ratio" if by_ratio else "components",
            description="choose k by",
        ),
        "variance_ratio": widgets.FloatSlider(
            value=n_components if by_ratio else 0.9,
            min=0.5,
            max=0.999,
            step=0.005,
            readout_format=".3f",
            description="variance",
            continuous_update=False,
        ),
        "n_components": widgets.IntSlider(
            value=n_components if not by_ratio else 2, min=1, max=max_k, description="k", continuous_update=False
        ),
    }

    def sync_disabled(change=None):
        controls["variance_ratio"].disabled = controls["mode"].value != "variance ratio"
        controls["n_components"].disabled = controls["mode"].value != "components"

    sync_disabled()
    controls["mode"].observe(sync_disabled, names="value")

    def compute(mode, variance_ratio, n_components):
        chosen = float(variance_ratio) if mode == "variance ratio" else int(n_components)
        return pca_explore(train_t, test_normal, test_anomalous, n_components=chosen)

    return WidgetView(controls, compute, _draw_pca, title="PCA subspace and reconstruction error (DFM)")


def pca_static_figure(
    train, test_normal, test_anomalous, settings: tuple[int | float, ...] = (1, 4, 16, 0.97)
) -> Figure:
    """Small multiples for the book: the variance curve and 2-D projection, then one error
    histogram (with its AUROC) per ``n_components`` setting."""
    results = [pca_explore(train, test_normal, test_anomalous, n_components=s) for s in settings]
    n_panels = 2 + len(results)
    n_cols = 3
    n_rows = -(-n_panels // n_cols)
    fig = _new_figure(4 * n_cols, 3.2 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    _draw_variance_curve(axes[0], results[0], marks=[r["k"] for r in results])
    axes[0].set_title("explained variance (dashed: the k below)", fontsize="medium")
    _draw_projection(axes[1], results[0])
    for ax, setting, result in zip(axes[2:], settings, results):
        label = f"{setting:.0%} variance → k = {result['k']}" if isinstance(setting, float) else f"k = {result['k']}"
        _draw_error_histogram(ax, result, title=f"{label}: AUROC {result['auroc']:.2f}")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig
