"""Conditional flow widget: the condition *moves* the density (the idea behind C-Flow's positional code).

A conditional flow z = f(x; c) is invertible in x for every condition c, and its coupling subnets see c
next to the half of x they read, so log p(x | c) = log N(f(x; c)) + log|det ∂f/∂x| is a whole family of
densities, one per c. The toy: 2-D points around a centre that travels on a circle as a scalar
c ∈ [0, 1) goes round, x = 1.5·(cos 2πc, sin 2πc) + 0.3·ε; the flow is given c as (cos 2πc, sin 2πc)
(a tiny periodic "positional code"). One flow, trained on all conditions at once, learns where the
points are *for each* c — what C-Flow does with the position of a feature vector in the image.

    points, conditions = make_conditional_toy_data()
    flow, losses = train_conditional_toy_flow(points, conditions)       # a few seconds on a CPU
    result = conditional_flow_explore(flow, condition=0.25)              # pure numbers
    conditional_flow_widget(flow)                                        # live, in Jupyter
    conditional_flow_static_figure(flow, conditions=(0, 0.25, 0.5, 0.75))   # for the book
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components.flow import AllInOneBlock, SequenceFlow, subnet_fc
from adlearn.widgets.common import single_thread
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "make_conditional_toy_data",
    "condition_code",
    "train_conditional_toy_flow",
    "conditional_log_likelihood",
    "conditional_flow_explore",
    "conditional_flow_widget",
    "conditional_flow_static_figure",
]

RADIUS, SPREAD, LIMIT = 1.5, 0.3, 2.8


def make_conditional_toy_data(n_samples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 2), conditions (N,) in [0, 1)): points around a centre that moves with the condition."""
    rng = np.random.default_rng(seed)
    conditions = rng.uniform(0.0, 1.0, n_samples)
    centres = RADIUS * np.stack([np.cos(2 * np.pi * conditions), np.sin(2 * np.pi * conditions)], axis=1)
    points = centres + SPREAD * rng.standard_normal((n_samples, 2))
    return points.astype(np.float32), conditions.astype(np.float32)


def condition_code(conditions) -> torch.Tensor:
    """(N,) conditions in [0, 1) -> (N, 2) code (cos 2πc, sin 2πc): c = 0 and c = 1 are the same."""
    c = torch.from_numpy(np.array(conditions, dtype=np.float32)).reshape(-1)
    return torch.stack([torch.cos(2 * math.pi * c), torch.sin(2 * math.pi * c)], dim=1)


def _build(n_blocks: int, hidden: int, seed: int) -> SequenceFlow:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SequenceFlow(
            [
                AllInOneBlock([(2,)], dims_c=[(2,)], subnet_constructor=subnet_fc(hidden), permute_soft=True)
                for _ in range(n_blocks)
            ]
        )


def conditional_log_likelihood(flow: SequenceFlow, points, conditions) -> torch.Tensor:
    """log p(x | c) of each row of ``points (N, 2)`` under its condition (scalar or (N,))."""
    x = torch.as_tensor(np.asarray(points, dtype=np.float32))
    c = np.broadcast_to(np.asarray(conditions, dtype=np.float32), (x.shape[0],))
    z, log_det = flow(x, c=[condition_code(c)])
    return -0.5 * z.pow(2).sum(dim=1) - math.log(2 * math.pi) + log_det


def train_conditional_toy_flow(
    points,
    conditions,
    n_blocks: int = 6,
    hidden: int = 32,
    steps: int = 400,
    batch_size: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
) -> tuple[SequenceFlow, np.ndarray]:
    """Fit a conditional flow by maximum likelihood (Adam on −mean log p(x | c)); (flow in eval mode, losses)."""
    x = torch.as_tensor(np.asarray(points, dtype=np.float32))
    code = condition_code(conditions)
    flow = _build(n_blocks, hidden, seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = np.empty(steps)
    with single_thread():
        for step in range(steps):
            rows = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
            z, log_det = flow(x[rows], c=[code[rows]])
            loss = -(-0.5 * z.pow(2).sum(dim=1) - math.log(2 * math.pi) + log_det).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[step] = loss.item()
    return flow.eval(), losses


@torch.no_grad()
def conditional_flow_explore(flow: SequenceFlow, condition: float = 0.0, grid_points: int = 80) -> dict:
    """The density p(x | c) on a grid, where its peak is, and where the data's centre is for this c."""
    axis = np.linspace(-LIMIT, LIMIT, grid_points)
    xx, yy = np.meshgrid(axis, axis)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    with single_thread():
        density = torch.exp(conditional_log_likelihood(flow, grid, condition)).numpy().reshape(xx.shape)
    peak = grid[int(np.argmax(density))]
    centre = RADIUS * np.array([np.cos(2 * np.pi * condition), np.sin(2 * np.pi * condition)])
    return {
        "condition": float(condition),
        "axis": axis,
        "density": density,
        "peak": peak,
        "centre": centre,
        "peak_error": float(np.linalg.norm(peak - centre)),
        "mass": float(density.sum() * (axis[1] - axis[0]) ** 2),
    }


def _draw(ax, result: dict) -> None:
    axis = result["axis"]
    ax.imshow(result["density"], origin="lower", extent=(axis[0], axis[-1], axis[0], axis[-1]), cmap="magma")
    circle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(RADIUS * np.cos(circle), RADIUS * np.sin(circle), color="white", lw=0.6, ls=":")
    ax.plot(*result["centre"], marker="+", color="cyan", markersize=12, mew=2, label="data centre for this c")
    ax.set_title(f"p(x | c = {result['condition']:.2f})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def conditional_flow_widget(flow: SequenceFlow, condition: float = 0.0) -> WidgetView:
    """Live view: slide the condition c and watch one flow's density travel round the circle."""
    import ipywidgets as widgets

    controls = {
        "condition": widgets.FloatSlider(
            value=condition, min=0.0, max=0.99, step=0.01, description="condition c", continuous_update=False
        )
    }

    def draw(result):
        fig = _new_figure(4.5, 4.5)
        _draw(fig.subplots(1, 1), result)
        return fig

    return WidgetView(
        controls,
        lambda condition: conditional_flow_explore(flow, condition),
        draw,
        title="Conditional flow: the condition moves the density",
    )


def conditional_flow_static_figure(flow: SequenceFlow, conditions=(0.0, 0.25, 0.5, 0.75)) -> Figure:
    """Small multiples for the book: the density of one trained flow under several conditions."""
    fig = _new_figure(3.2 * len(conditions), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(conditions)))
    for ax, condition in zip(axes, conditions):
        _draw(ax, conditional_flow_explore(flow, condition))
    axes[0].legend(fontsize=7, loc="lower left")
    return fig
