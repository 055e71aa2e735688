"""Flow widget: a stack of `AllInOneBlock`s bends a 2-D toy distribution into a standard Gaussian.

A normalizing flow is an invertible map z = f(x) = f_K(… f_1(x)) trained so that z ~ N(0, I).
The change-of-variables formula then gives an exact log-likelihood

    log p(x) = log N(f(x); 0, I) + Σ_k log |det ∂f_k/∂h_{k−1}|,

and an anomaly is a sample with a low one. Stopping after the first ``l`` blocks is still a valid
density, p_l(x) = N(f_{≤l}(x)) · |det ∂f_{≤l}/∂x|, so the widget lets you step through the layers:
the points after ``l`` blocks (the moons unfold into a round blob), the density p_l in the input
space (it sharpens onto the moons), and log p_l of inliers vs outliers.

    inliers = make_toy_data("moons"); outliers = make_outliers(inliers)
    flow, losses = train_toy_flow(inliers, steps=500, seed=0)        # a few seconds on a CPU
    result = flow_explore(flow, inliers, outliers, layer=3)           # pure numbers
    flow_widget(flow, inliers, outliers)                              # live, in Jupyter
    flow_static_figure(flow, inliers, outliers, layers=(0, 2, 4, 8))  # for the book
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components.flow import AllInOneBlock, SequenceFlow, subnet_fc
from adlearn.widgets.common import _as_numpy, _as_tensor, separation_auroc, single_thread
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "make_toy_data",
    "make_outliers",
    "build_toy_flow",
    "train_toy_flow",
    "push_through",
    "flow_log_likelihood",
    "flow_explore",
    "flow_widget",
    "flow_static_figure",
]

COLORS = {"inliers": "tab:blue", "outliers": "tab:red"}
LATENT_LIMIT = 4.5  # latent panels show [-4.5, 4.5]²: N(0, I) has 99.99 % of its mass inside


# ---------------------------------------------------------------------------------- toy data
def make_toy_data(kind: str = "moons", n_samples: int = 1000, noise: float = 0.06, seed: int = 0) -> np.ndarray:
    """Standardized 2-D inliers ``(N, 2)``: ``"moons"`` (two interleaved half circles) or ``"ring"``."""
    rng = np.random.default_rng(seed)
    if kind == "moons":
        from sklearn.datasets import make_moons

        points, _ = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    elif kind == "ring":
        angle = rng.uniform(0, 2 * np.pi, n_samples)
        radius = 1.0 + noise * rng.standard_normal(n_samples)
        points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    else:
        raise ValueError(f"kind must be 'moons' or 'ring', got {kind!r}")
    points = (points - points.mean(axis=0)) / points.std(axis=0)  # zero mean, unit variance
    return points.astype(np.float32)


def make_outliers(inliers, n_samples: int = 200, min_distance: float = 0.4, seed: int = 0) -> np.ndarray:
    """``(M, 2)`` points drawn uniformly around the inliers, keeping only those farther than
    ``min_distance`` from every inlier (so they really lie off the distribution)."""
    inliers = _as_numpy(inliers)
    rng = np.random.default_rng(seed)
    low, high = inliers.min(axis=0) - 0.5, inliers.max(axis=0) + 0.5
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n_samples:
        candidates = rng.uniform(low, high, size=(4 * n_samples, 2))
        nearest = torch.cdist(torch.from_numpy(candidates), torch.from_numpy(inliers).double()).min(dim=1).values
        kept.append(candidates[_as_numpy(nearest) > min_distance])
    return np.concatenate(kept)[:n_samples].astype(np.float32)


# ---------------------------------------------------------------------------------- the flow
def build_toy_flow(n_blocks: int = 8, hidden: int = 32, seed: int = 0) -> SequenceFlow:
    """``n_blocks`` `AllInOneBlock`s on 2 channels, each with an MLP subnet of width ``hidden``.

    With 2 channels a block transforms one coordinate given the other, so the blocks use a random
    *rotation* between them (``permute_soft=True``): a hard permutation of two channels is the
    identity half of the time, and then consecutive blocks would bend the same coordinate.
    """
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG state
        torch.manual_seed(seed)
        blocks = [
            AllInOneBlock([(2,)], subnet_constructor=subnet_fc(hidden), permute_soft=True) for _ in range(n_blocks)
        ]
    return SequenceFlow(blocks)


def push_through(flow: SequenceFlow, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(h_l (N, 2), log|det ∂h_l/∂x| (N,)) for l = 0 … K]``: the points after each block."""
    states = [(x, x.new_zeros(x.shape[0]))]
    for block in flow.blocks:
        (h,), log_det = block((states[-1][0],))
        states.append((h, states[-1][1] + log_det))
    return states


def _gaussian_log_likelihood(h: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """log N(h; 0, I) + log|det| for (N, D) points -> (N,)."""
    dims = h.shape[1]
    return -0.5 * h.pow(2).sum(dim=1) - 0.5 * dims * math.log(2 * math.pi) + log_det


def flow_log_likelihood(flow: SequenceFlow, x, n_layers: int | None = None) -> torch.Tensor:
    """log p_l(x) of each row of ``x (N, 2)`` using the first ``n_layers`` blocks (default: all)."""
    x = _as_tensor(x, "x")
    h, log_det = push_through(flow, x)[len(flow) if n_layers is None else n_layers]
    return _gaussian_log_likelihood(h, log_det)


def train_toy_flow(
    data, n_blocks: int = 8, hidden: int = 32, steps: int = 500, batch_size: int = 256, lr: float = 1e-2, seed: int = 0
) -> tuple[SequenceFlow, np.ndarray]:
    """Fit a flow to ``data (N, 2)`` by maximum likelihood (Adam on −mean log p(x)).

    Returns ``(flow in eval mode, losses (steps,))``. Seeded: the same arguments give the same flow.
    The defaults fit the standardized two moons to a mean log-likelihood of about −1.5 in 2–5 s
    on one CPU core.
    """
    data_t = _as_tensor(data, "data").float()
    flow = build_toy_flow(n_blocks, hidden, seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = np.empty(steps)
    flow.train()
    with single_thread():  # tiny tensors: threads would only wait on each other
        for step in range(steps):
            batch = data_t[torch.randint(0, data_t.shape[0], (batch_size,), generator=generator)]  # (B, 2)
            z, log_det = flow(batch)
            loss = -_gaussian_log_likelihood(z, log_det).mean()  # −mean log p(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[step] = loss.item()
    return flow.eval(), losses


# ---------------------------------------------------------------------------------- compute
def _grid(points: np.ndarray, grid_points: int, limits) -> tuple[np.ndarray, np.ndarray]:
    if limits is None:
        low, high = points.min(axis=0) - 0.5, points.max(axis=0) + 0.5
        limits = tuple(zip(low, high))
    return tuple(np.linspace(lo, hi, grid_points, dtype=np.float32) for lo, hi in limits)


@torch.no_grad()
def flow_explore(
    flow: SequenceFlow, inliers, outliers, layer: int | None = None, grid_points: int = 70, limits=None
) -> dict:
    """What the flow does up to ``layer`` blocks (0 = the raw data under N(0, I); default: all).

    Returns a dict: ``layer``, ``n_layers``, ``inliers_at_layer`` / ``outliers_at_layer`` (the
    points after ``layer`` blocks, ``(N, 2)``), ``log_likelihood_{inliers,outliers}`` (log p_l),
    their means and medians, ``auroc`` of the score −log p_l, the raw ``inliers`` / ``outliers``,
    and ``grid_x``, ``grid_y``, ``density (G, G)``
    — p_l on a grid of the input space, indexed [y, x].
    """
    flow.eval()
    n_layers = len(flow)
    layer = n_layers if layer is None else int(layer)
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer must lie in [0, {n_layers}], got {layer}")
    inliers_t, outliers_t = _as_tensor(inliers, "inliers").float(), _as_tensor(outliers, "outliers").float()

    result = {"layer": layer, "n_layers": n_layers, "inliers": _as_numpy(inliers_t), "outliers": _as_numpy(outliers_t)}
    with single_thread():  # 2-D points: threads would only wait on each other
        for name, points in (("inliers", inliers_t), ("outliers", outliers_t)):
            h, log_det = push_through(flow, points)[layer]
            result[f"{name}_at_layer"] = _as_numpy(h)
            result[f"log_likelihood_{name}"] = _as_numpy(_gaussian_log_likelihood(h, log_det))
            result[f"mean_log_likelihood_{name}"] = float(result[f"log_likelihood_{name}"].mean())
            # The median too: a few outliers flung far out make the mean of log p huge and negative.
            result[f"median_log_likelihood_{name}"] = float(np.median(result[f"log_likelihood_{name}"]))

        grid_x, grid_y = _grid(np.r_[_as_numpy(inliers_t), _as_numpy(outliers_t)], grid_points, limits)
        xx, yy = np.meshgrid(grid_x, grid_y)  # (G, G) each, [y, x]
        queries = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1))  # (G², 2)
        log_density = flow_log_likelihood(flow, queries, n_layers=layer)
    result["auroc"] = separation_auroc(-result["log_likelihood_inliers"], -result["log_likelihood_outliers"])
    result.update(grid_x=grid_x, grid_y=grid_y, density=_as_numpy(log_density.exp()).reshape(xx.shape))
    return result


# ---------------------------------------------------------------------------------- panels
def _draw_latent(ax: Axes, result: dict, title: str | None = None) -> None:
    """The points after ``layer`` blocks, with the 1σ, 2σ, 3σ circles of N(0, I)."""
    angle = np.linspace(0, 2 * np.pi, 200)
    for radius in (1, 2, 3):
        ax.plot(radius * np.cos(angle), radius * np.sin(angle), color="0.7", lw=0.8)
    for name, marker in (("inliers", "."), ("outliers", "x")):
        points = result[f"{name}_at_layer"]
        ax.scatter(
            points[:, 0], points[:, 1], s=6 if name == "inliers" else 12, marker=marker, color=COLORS[name], label=name
        )
    ax.set_xlim(-LATENT_LIMIT, LATENT_LIMIT)
    ax.set_ylim(-LATENT_LIMIT, LATENT_LIMIT)
    ax.set_aspect("equal")
    ax.set_title(title or f"points after {result['layer']} of {result['n_layers']} blocks", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper right")


def _draw_density(ax: Axes, result: dict, title: str | None = None) -> None:
    """p_l(x) over the input space (darker = denser), with the outliers on top."""
    ax.contourf(result["grid_x"], result["grid_y"], result["density"], levels=12, cmap="Greys")
    outliers = result["outliers"]
    ax.scatter(outliers[:, 0], outliers[:, 1], s=6, marker="x", color=COLORS["outliers"], alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title or f"density p_{result['layer']}(x) in the input space", fontsize="medium")


def _draw_log_likelihood_histogram(ax: Axes, result: dict) -> None:
    """log p_l of inliers vs outliers: training pushes the two apart."""
    inliers, outliers = result["log_likelihood_inliers"], result["log_likelihood_outliers"]
    bins = np.histogram_bin_edges(np.clip(np.r_[inliers, outliers], -30, None), bins=25)
    ax.hist(
        np.clip(inliers, bins[0], None),
        bins=bins,
        alpha=0.6,
        density=True,
        color=COLORS["inliers"],
        label=f"inliers (median {result['median_log_likelihood_inliers']:.2f})",
    )
    ax.hist(
        np.clip(outliers, bins[0], None),
        bins=bins,
        alpha=0.6,
        density=True,
        color=COLORS["outliers"],
        label=f"outliers (median {result['median_log_likelihood_outliers']:.2f})",
    )
    ax.set_xlabel("log p(x)  (clipped at −30)")
    ax.set_ylabel("share of samples")
    # The axis shows log p itself (anomalies on the left); the score −log p only enters the AUROC.
    ax.set_title(f"log p(x); AUROC of the score −log p: {result['auroc']:.2f}", fontsize="medium")
    ax.legend(fontsize="x-small")


def _draw_flow(result: dict) -> Figure:
    """The widget's figure: latent points | density in input space | log-likelihood histograms."""
    fig = _new_figure(13, 4)
    latent, density, histogram = fig.subplots(1, 3)
    _draw_latent(latent, result)
    _draw_density(density, result)
    _draw_log_likelihood_histogram(histogram, result)
    return fig


# ---------------------------------------------------------------------------------- views
def flow_widget(flow: SequenceFlow, inliers, outliers, layer: int | None = None) -> WidgetView:
    """Live view: step through the blocks of a trained flow. Control: ``layer`` (0 … K).

    The slider starts at 0 blocks (the raw data under N(0, I)) unless ``layer`` says otherwise, so
    moving it to the right adds the blocks one at a time up to the trained model.
    """
    import ipywidgets as widgets

    n_layers = len(flow)
    controls = {
        "layer": widgets.IntSlider(
            value=0 if layer is None else layer, min=0, max=n_layers, description="blocks", continuous_update=False
        )
    }

    def compute(layer):
        return flow_explore(flow, inliers, outliers, layer=layer)

    return WidgetView(controls, compute, _draw_flow, title="Normalizing flow, block by block")


def flow_static_figure(flow: SequenceFlow, inliers, outliers, layers=None) -> Figure:
    """Small multiples for the book: one column per layer count (default: 4 evenly spaced from
    0 to K); top row the points after that many blocks, bottom row the density p_l(x)."""
    n_layers = len(flow)
    if layers is None:
        layers = sorted({round(i * n_layers / 3) for i in range(4)})
    fig = _new_figure(3.3 * len(layers), 6.6)
    axes = fig.subplots(2, len(layers), squeeze=False)
    for column, layer in enumerate(layers):
        result = flow_explore(flow, inliers, outliers, layer=layer)
        _draw_latent(
            axes[0, column],
            result,
            title=f"{layer} blocks: median log p in {result['median_log_likelihood_inliers']:.1f}, "
            f"out {result['median_log_likelihood_outliers']:.1f}",
        )
        _draw_density(axes[1, column], result, title=f"p_{layer}(x): AUROC {result['auroc']:.2f}")
        if column:
            axes[0, column].get_legend().remove()
    return fig
