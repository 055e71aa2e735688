"""Mixture widget: how many Gaussians describe "normal", and how much to regularise their covariances.

Normal data often comes in groups. One Gaussian N(μ, Σ) puts its centre between them, exactly
where nothing normal lives; a mixture of K Gaussians (`GaussianMixture`, fitted by EM, Bishop
Sec. 9.2) or K k-means clusters (`KMeans`, Bishop Sec. 9.1), each with its own Gaussian, gives every
group its own shape. Two scores:

    mixture:  s(x) = −log p(x),   p(x) = Σ_k π_k N(x | μ_k, Σ_k + ε I)
    k-means:  s(x) = min_k M_k(x),   M_k(x)² = (x − μ_k)ᵀ (Σ_k + ε I)⁻¹ (x − μ_k)

where Σ_k of a k-means cluster is the (biased) covariance of its members. The second knob is ε,
added to every covariance's diagonal, as PaDiM adds 0.01·I (Defard et al., 2020, Sec. 3.2): it sets
the smallest variance a component may have. A group that is flat in one direction has a nearly
singular covariance, condition number κ = λ_max / λ_min huge, and a tiny step off it is a huge
Mahalanobis distance; ε turns κ into (λ_max + ε) / (λ_min + ε), rounding the ellipse.

    toy = make_mixture_toy()                                                  # train / normal / anomalous
    result = mixture_explore(toy["train"], toy["normal"], toy["anomalous"], n_components=3)   # numbers
    mixture_widget(toy["train"], toy["normal"], toy["anomalous"])             # live, in Jupyter
    mixture_static_figure(toy["train"], toy["normal"], toy["anomalous"])     # for the book
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components import GaussianMixture, KMeans
from adlearn.components.gmm import mahalanobis_to_components
from adlearn.widgets.common import _as_numpy, _as_tensor, separation_auroc
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "make_mixture_toy",
    "mahalanobis_to_components",
    "mixture_explore",
    "mixture_widget",
    "mixture_static_figure",
]

METHODS = ("mixture", "k-means")
COLORS = {"train": "0.55", "normal": "tab:blue", "anomalous": "tab:red"}
# Component ellipses: none blue / red (the test points) or green (the threshold contour).
COMPONENT_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "magenta")
DEFAULT_SETTINGS = ((1, 1e-2), (3, 1e-2), (3, 1e-6), (3, 1.0))  # (K, ε) of the book's panels
GRID_POINTS = 120
MARGIN = 1.0  # the score grid extends this far past the data
THRESHOLD_QUANTILE = 0.99  # the drawn contour: the score that 99 % of the training points stay below


# ---------------------------------------------------------------------------------- toy data
def make_mixture_toy(
    n_train: int = 300, n_test: int = 100, n_anomalous: int = 100, min_distance: float = 0.35, seed: int = 0
) -> dict[str, np.ndarray]:
    """Three groups of normal 2-D points and anomalies around them, as float64 arrays.

    The groups: a round blob, a tilted elongated one, and a nearly flat one (std 1.2 along x, 0.03
    across: its covariance is close to singular). Anomalies are uniform over the data's box, kept
    only when farther than ``min_distance`` from every training point — so some fall in the gaps
    between the groups, some just beside the flat one.

    Returns ``{"train" (n_train, 2), "normal" (n_test, 2), "anomalous" (n_anomalous, 2)}``.
    """
    rng = np.random.default_rng(seed)
    tilt = np.array([[np.cos(np.pi / 4), -np.sin(np.pi / 4)], [np.sin(np.pi / 4), np.cos(np.pi / 4)]])
    groups = [  # (centre, (2, 2) matrix A: a point is centre + A @ standard normal)
        (np.array([-2.2, 1.6]), 0.45 * np.eye(2)),
        (np.array([2.0, 1.4]), tilt @ np.diag([1.0, 0.25])),
        (np.array([0.0, -2.0]), np.diag([1.2, 0.03])),
    ]

    def normal_points(n: int) -> np.ndarray:
        group = rng.integers(0, len(groups), n)
        noise = rng.standard_normal((n, 2))
        return np.stack([groups[g][0] + groups[g][1] @ e for g, e in zip(group, noise)])  # (n, 2)

    train, normal = normal_points(n_train), normal_points(n_test)
    low, high = train.min(axis=0) - 0.5, train.max(axis=0) + 0.5
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n_anomalous:
        candidates = rng.uniform(low, high, size=(4 * n_anomalous, 2))
        nearest = np.sqrt(((candidates[:, None, :] - train[None, :, :]) ** 2).sum(-1)).min(axis=1)
        kept.append(candidates[nearest > min_distance])
    return {"train": train, "normal": normal, "anomalous": np.concatenate(kept)[:n_anomalous]}


# ---------------------------------------------------------------------------------- compute
def _fit_mixture(train: torch.Tensor, n_components: int, regularization: float, seed: int):
    """EM with ``reg_covar = ε``; -> (model, converged). A non-converged EM is reported, not raised."""
    mixture = GaussianMixture(n_components=n_components, n_iter=300, tol=1e-6, seed=seed, reg_covar=regularization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its "did not converge" is returned as `converged`
        mixture.fit(train)
    return mixture, bool(mixture.converged_)


def _fit_kmeans(train: torch.Tensor, n_components: int, regularization: float, seed: int):
    """k-means++ clusters, then each cluster's Gaussian: (means (K, D), covariances + ε I (K, D, D), weights (K,), labels)."""
    labels, centres = KMeans(n_clusters=n_components, max_iter=100, init="k-means++", seed=seed).fit(train)
    dims = train.shape[1]
    covariances = torch.empty(n_components, dims, dims, dtype=train.dtype)
    for k in range(n_components):
        members = train[labels == k]  # (N_k, D)
        centred = members - centres[k]
        covariances[k] = centred.T @ centred / max(len(members), 1)  # biased, as EM's M-step
    covariances += regularization * torch.eye(dims, dtype=train.dtype)
    weights = torch.bincount(labels, minlength=n_components).to(train.dtype) / len(train)
    return centres, covariances, weights, labels


def _limits(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    low, high = points.min(axis=0) - MARGIN, points.max(axis=0) + MARGIN
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))


def mixture_explore(
    train,
    test_normal,
    test_anomalous,
    n_components: int = 3,
    regularization: float = 1e-2,
    method: str = "mixture",
    seed: int = 0,
    grid_points: int = GRID_POINTS,
    limits=None,
) -> dict:
    """Fit K components with covariance regularisation ε on 2-D ``train`` and score everything.

    Args:
        train: normal training points ``(N, 2)`` (project wider features first, e.g. with
            `adlearn.widgets.common.project_features`).
        test_normal, test_anomalous: held-out points ``(M, 2)`` to score.
        n_components: K, the mixture's Gaussians or the k-means clusters.
        regularization: ε added to every covariance's diagonal (``GaussianMixture``'s ``reg_covar``).
        method: ``"mixture"`` (score −log p(x)) or ``"k-means"`` (score: the Mahalanobis distance to
            the nearest cluster's Gaussian).
        seed: seeds k-means (also EM's k-means start).
        grid_points, limits: the score grid, per axis (default: the data plus a margin of 1).

    Returns a dict: ``means (K, 2)``, ``covariances (K, 2, 2)`` (ε included), ``weights (K,)``,
    ``condition_numbers (K,)``, ``labels (N,)`` (each training point's component),
    ``scores_{train,normal,anomalous}``, ``auroc`` (anomalous vs normal test points), ``threshold``
    (the 99 % quantile of the training scores), ``grid`` ([x (G,), y (G,)]), ``score_grid (G, G)``
    indexed [y, x], ``converged`` (EM; ``None`` for k-means) and the points.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not regularization >= 0:
        raise ValueError(f"regularization (ε added to the covariance diagonal) must be >= 0, got {regularization}")
    train_t = _as_tensor(train, "train").double()  # (N, 2)
    normal_t = _as_tensor(test_normal, "test_normal").double()
    anomalous_t = _as_tensor(test_anomalous, "test_anomalous").double()
    if train_t.shape[1] != 2:
        raise ValueError(
            f"mixture_explore draws 2-D data, got {train_t.shape[1]} features: project them first "
            "(project_features(train, ..., n_components=2))"
        )
    if not 1 <= n_components <= len(train_t):
        raise ValueError(f"n_components must be in 1..{len(train_t)} (the training points), got {n_components}")

    if method == "mixture":
        mixture, converged = _fit_mixture(train_t, n_components, regularization, seed)
        means, covariances, weights = mixture.means, mixture.covariances, mixture.weights
        labels = mixture.predict(train_t)

        def score(points: torch.Tensor) -> torch.Tensor:
            return -mixture.score_samples(points)  # (M,) −log p(x)

    else:
        means, covariances, weights, labels = _fit_kmeans(train_t, n_components, regularization, seed)
        converged = None

        def score(points: torch.Tensor) -> torch.Tensor:
            return mahalanobis_to_components(points, means, covariances).min(dim=1).values  # (M,)

    everything = _as_numpy(torch.cat([train_t, normal_t, anomalous_t]))
    axes = [np.linspace(lo, hi, grid_points) for lo, hi in (limits or _limits(everything))]
    xx, yy = np.meshgrid(*axes)  # (G, G) each, [y, x]
    queries = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1))  # (G², 2)
    eigenvalues = torch.linalg.eigvalsh(covariances)  # (K, 2), ascending

    result = {
        "method": method,
        "n_components": int(n_components),
        "regularization": float(regularization),
        "means": _as_numpy(means),
        "covariances": _as_numpy(covariances),
        "weights": _as_numpy(weights),
        "condition_numbers": _as_numpy(eigenvalues[:, -1] / eigenvalues[:, 0]),
        "labels": _as_numpy(labels),
        "converged": converged,
        "grid": axes,
        "score_grid": _as_numpy(score(queries)).reshape(xx.shape),
        "train": _as_numpy(train_t),
        "normal": _as_numpy(normal_t),
        "anomalous": _as_numpy(anomalous_t),
    }
    for name, points in (("train", train_t), ("normal", normal_t), ("anomalous", anomalous_t)):
        result[f"scores_{name}"] = _as_numpy(score(points))
    result["threshold"] = float(np.quantile(result["scores_train"], THRESHOLD_QUANTILE))
    result["auroc"] = separation_auroc(result["scores_normal"], result["scores_anomalous"])
    return result


# ---------------------------------------------------------------------------------- panels
def _ellipse(ax: Axes, mean: np.ndarray, covariance: np.ndarray, color: str) -> None:
    """The 2σ ellipse of N(mean, covariance): axes along the eigenvectors, half-lengths 2·sqrt(λ)."""
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(covariance)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    width, height = 4 * np.sqrt(values[1]), 4 * np.sqrt(values[0])
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color=color, lw=2))


def _score_label(method: str) -> str:
    return "−log p(x)" if method == "mixture" else "min_k Mahalanobis"


def _draw_scene(ax: Axes, result: dict, title: str | None = None) -> None:
    """The score as a filled background, the 99 % training contour, the points and the 2σ ellipses."""
    x, y = result["grid"]
    scores = result["score_grid"]
    # Colour up to a high quantile of the grid: −log p grows without bound away from the data.
    ceiling = float(np.quantile(scores, 0.9))
    ax.contourf(x, y, np.minimum(scores, ceiling), levels=14, cmap="Greys")
    ax.contour(x, y, scores, levels=[result["threshold"]], colors="tab:green", linewidths=1.5)
    ax.scatter(*result["train"].T, s=6, color=COLORS["train"], label="train")
    ax.scatter(*result["normal"].T, s=14, marker="o", color=COLORS["normal"], label="normal test")
    ax.scatter(*result["anomalous"].T, s=16, marker="x", color=COLORS["anomalous"], label="anomalous test")
    for k, (mean, covariance) in enumerate(zip(result["means"], result["covariances"])):
        _ellipse(ax, mean, covariance, COMPONENT_COLORS[k % len(COMPONENT_COLORS)])
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    kind = "Gaussians" if result["method"] == "mixture" else "k-means clusters"
    ax.set_title(
        title or f"{result['n_components']} {kind}, ε = {result['regularization']:g}: AUROC {result['auroc']:.2f}",
        fontsize="medium",
    )


def _draw_histogram(ax: Axes, result: dict) -> None:
    """The score of normal vs anomalous test points, with the 99 % training threshold."""
    normal, anomalous = result["scores_normal"], result["scores_anomalous"]
    bins = np.histogram_bin_edges(np.r_[normal, anomalous], bins=25)
    ax.hist(normal, bins=bins, alpha=0.6, color=COLORS["normal"], label="normal")
    ax.hist(anomalous, bins=bins, alpha=0.6, color=COLORS["anomalous"], label="anomalous")
    ax.axvline(result["threshold"], color="tab:green", lw=1.5, label="99 % of train below")
    ax.set_xlabel(_score_label(result["method"]))
    ax.set_ylabel("test points")
    worst = float(result["condition_numbers"].max())
    ax.set_title(f"largest condition number κ = {worst:.3g}", fontsize="medium")
    ax.legend(fontsize="small")


def _draw_mixture(result: dict) -> Figure:
    """The widget's figure: scene | score histogram."""
    fig = _new_figure(11, 4.4)
    scene, histogram = fig.subplots(1, 2, width_ratios=[1.3, 1])
    _draw_scene(scene, result)
    scene.legend(fontsize="x-small", loc="upper right")
    _draw_histogram(histogram, result)
    return fig


# ---------------------------------------------------------------------------------- views
def mixture_widget(
    train,
    test_normal,
    test_anomalous,
    n_components: int = 3,
    regularization: float = 1e-2,
    method: str = "mixture",
    seed: int = 0,
    max_components: int = 8,
) -> WidgetView:
    """Live view of K components and the covariance regularisation ε on 2-D points.

    Controls: ``n_components`` (K, 1 … ``max_components``), ``regularization`` (log slider, ε from
    1e-6 to 10) and ``method`` ("mixture" or "k-means").
    """
    import ipywidgets as widgets

    limits = _limits(_as_numpy(torch.cat([_as_tensor(a) for a in (train, test_normal, test_anomalous)])))
    controls = {
        "n_components": widgets.IntSlider(
            value=n_components, min=1, max=max_components, description="K", continuous_update=False
        ),
        "regularization": widgets.FloatLogSlider(
            value=regularization, base=10, min=-6, max=1, step=0.5, description="ε", continuous_update=False
        ),
        "method": widgets.ToggleButtons(options=list(METHODS), value=method, description="score"),
    }

    def compute(n_components, regularization, method):
        return mixture_explore(
            train, test_normal, test_anomalous, n_components, regularization, method, seed=seed, limits=limits
        )

    return WidgetView(controls, compute, _draw_mixture, title="Gaussians, mixtures and k-means: K and ε")


def mixture_static_figure(
    train, test_normal, test_anomalous, settings=DEFAULT_SETTINGS, methods=("mixture",), seed: int = 0
) -> Figure:
    """Small multiples for the book: one column per ``(K, ε)`` setting, one row per method, each
    panel titled with its AUROC and largest condition number."""
    limits = _limits(_as_numpy(torch.cat([_as_tensor(a) for a in (train, test_normal, test_anomalous)])))
    fig = _new_figure(3.6 * len(settings), 3.4 * len(methods))
    axes = fig.subplots(len(methods), len(settings), squeeze=False)
    for row, method in enumerate(methods):
        for column, (k, epsilon) in enumerate(settings):
            result = mixture_explore(train, test_normal, test_anomalous, k, epsilon, method, seed=seed, limits=limits)
            name = "K" if method == "mixture" else "k-means K"
            _draw_scene(
                axes[row, column],
                result,
                title=f"{name} = {k}, ε = {epsilon:g}: AUROC {result['auroc']:.2f}\n"
                f"κ ≤ {result['condition_numbers'].max():.3g}",
            )
    axes[0, 0].legend(fontsize="x-small", loc="upper right")
    return fig
