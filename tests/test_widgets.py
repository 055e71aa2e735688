"""Widgets: compute functions against independent facts, views driven headlessly through their controls.

Each view is driven the way a user would: set a control's ``.value`` and check that both the
computed result and the figure's data changed accordingly. Compute functions are checked against
scikit-learn / SciPy and against properties that must hold (a density integrates to 1, greedy
coverage beats random, a trained flow prefers its inliers).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from adlearn import widgets  # noqa: E402
from adlearn.widgets.coreset import kcenter_indices  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and kind to the other jobs on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def subspace_features():
    """Normal features near a 3-D subspace of R^12; anomalies leave it (train / normal / anomalous)."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 12))

    def normal(n):
        return rng.normal(size=(n, 3)) @ basis + 0.05 * rng.normal(size=(n, 12))

    anomalous = normal(30) + 0.8 * rng.normal(size=(30, 12))
    return normal(150), normal(30), anomalous


@pytest.fixture(scope="module")
def trained_flow():
    inliers = widgets.make_toy_data("moons", n_samples=600, seed=0)
    outliers = widgets.make_outliers(inliers, n_samples=100, seed=0)
    flow, losses = widgets.train_toy_flow(inliers, steps=300, seed=0)
    return flow, losses, inliers, outliers


def axis_titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_visible()]


# ------------------------------------------------------------------------------------ packaging
def test_import_does_not_load_ipywidgets_or_matplotlib():
    code = (
        "import sys, adlearn.widgets as w; from adlearn.widgets import pca, kde, coreset, flow; "
        "w.pca_explore; print('matplotlib' in sys.modules, 'ipywidgets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_widget_view_displays_as_its_container(subspace_features):
    view = widgets.pca_widget(*subspace_features, n_components=2)
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert view.n_updates == 1 and set(view.values()) == {"mode", "variance_ratio", "n_components"}


def test_histogram_bins_go_logarithmic_for_wide_positive_ranges():
    from adlearn.widgets.common import histogram_bins

    edges, log_scale = histogram_bins([1.0, 2.0], [500.0], bins=10)
    assert log_scale and edges[0] == 1.0 and edges[-1] == 500.0
    np.testing.assert_allclose(np.diff(np.log(edges)), np.log(500) / 10)  # evenly spaced in log
    edges, log_scale = histogram_bins([-1.0, 2.0], [5.0], bins=10)
    assert not log_scale and len(edges) == 11


# ------------------------------------------------------------------------------------------ PCA
def test_pca_explained_variance_matches_sklearn(subspace_features):
    from sklearn.decomposition import PCA as SklearnPCA

    train, normal, anomalous = subspace_features
    result = widgets.pca_explore(train, normal, anomalous, n_components=3)
    expected = SklearnPCA().fit(train).explained_variance_ratio_
    np.testing.assert_allclose(result["explained_variance_ratio"], expected, atol=1e-10)
    np.testing.assert_allclose(result["cumulative_ratio"], np.cumsum(expected), atol=1e-10)


def test_pca_ratio_mode_reconstruction_and_separation(subspace_features):
    train, normal, anomalous = subspace_features
    result = widgets.pca_explore(train, normal, anomalous, n_components=0.95)
    cumulative = result["cumulative_ratio"]
    # The minimal k whose cumulative share reaches 95 %.
    assert result["k"] == int(np.argmax(cumulative >= 0.95)) + 1 == 3
    assert result["auroc"] > 0.95  # anomalies leave the 3-D subspace
    # Keeping every direction reconstructs the training data exactly.
    full = widgets.pca_explore(train, normal, anomalous, n_components=12)
    assert full["error_train"].max() < 1e-8
    assert result["projection_anomalous"].shape == (30, 2)


def test_pca_widget_follows_its_controls(subspace_features):
    view = widgets.pca_widget(*subspace_features, n_components=0.9)
    assert view.controls["n_components"].disabled and not view.controls["variance_ratio"].disabled
    first_k, first_title = view.last_result["k"], view.figure.axes[2].get_title()

    view.controls["mode"].value = "components"
    assert view.controls["variance_ratio"].disabled and not view.controls["n_components"].disabled
    view.controls["n_components"].value = 1
    assert view.last_result["k"] == 1 != first_k
    assert view.figure.axes[2].get_title().startswith("k = 1:") and first_title.startswith(f"k = {first_k}:")
    # The dashed line of the variance panel marks k.
    assert view.figure.axes[0].lines[-1].get_xdata()[0] == 1
    assert view.n_updates == 3


def test_pca_static_figure(subspace_features):
    figure = widgets.pca_static_figure(*subspace_features, settings=(1, 3, 0.95))
    titles = axis_titles(figure)
    assert len(titles) == 5
    assert titles[2].startswith("k = 1:") and titles[3].startswith("k = 3:") and "95% variance → k = 3" in titles[4]


# ------------------------------------------------------------------------------------------ KDE
@pytest.mark.parametrize("dims", [1, 2])
def test_scaled_kde_matches_scipy(dims):
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(1)
    data = rng.normal(size=(200, dims)) @ rng.normal(size=(dims, dims))
    queries = rng.normal(size=(25, dims))
    for scale in (0.5, 1.0, 3.0):
        kde = widgets.ScaledGaussianKDE(torch.tensor(data), bandwidth_scale=scale)
        reference = gaussian_kde(data.T, bw_method=scale * 200 ** (-1 / (dims + 4)))
        np.testing.assert_allclose(kde(torch.tensor(queries)).numpy(), reference(queries.T), rtol=1e-10)


def test_scaled_kde_at_scale_one_is_gaussian_kde():
    from adlearn.components import GaussianKDE

    data, queries = torch.randn(100, 2, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(widgets.ScaledGaussianKDE(data)(queries), GaussianKDE(data)(queries))


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("bandwidth", [0.25, 1.0, 4.0])
def test_kde_density_integrates_to_one(dims, bandwidth):
    rng = np.random.default_rng(2)
    train = rng.normal(size=(150, dims))
    result = widgets.kde_explore(train, train[:10], train[:10] + 8, bandwidth=bandwidth)
    assert result["integral"] == pytest.approx(1.0, abs=0.01)
    assert result["density"].shape == ((400,) if dims == 1 else (80, 80))
    assert result["auroc"] == 1.0  # anomalies 8 std-devs away


def test_kde_explore_needs_projected_features():
    with pytest.raises(ValueError, match="project"):
        widgets.kde_explore(np.zeros((10, 3)), np.zeros((2, 3)), np.zeros((2, 3)))


def test_kde_widget_follows_its_controls(subspace_features):
    view = widgets.kde_widget(*subspace_features, bandwidth=1.0, dims=1)
    curve = view.figure.axes[0].lines[0].get_ydata().copy()
    view.controls["bandwidth"].value = 4.0
    assert view.last_result["bandwidth"] == 4.0
    assert view.last_result["factor"] == pytest.approx(4 * 150 ** (-1 / 5))
    wider = view.figure.axes[0].lines[0].get_ydata()
    assert wider.max() < curve.max()  # wider bumps: a flatter curve
    assert view.figure.axes[0].get_title().startswith("bandwidth 4× Scott")
    assert view.figure.axes[1].get_xlabel() == "log p(x)"
    assert view.figure.axes[1].get_title().startswith("log p(x); AUROC of the score −log p(x):")
    view.controls["bandwidth"].value = 2**0.75  # a stop of the log slider: 1.68179…
    assert view.figure.axes[0].get_title().startswith("bandwidth 1.68× Scott (h = ")

    view.controls["dims"].value = 2
    assert view.last_result["density"].shape == (80, 80)
    assert not view.figure.axes[0].lines and view.figure.axes[0].collections  # a contour plot now


def test_kde_static_figure(subspace_features):
    figure = widgets.kde_static_figure(*subspace_features, bandwidths=(0.5, 2.0))
    titles = axis_titles(figure)
    assert len(titles) == 4
    assert titles[0].startswith("1-D, 0.5× Scott") and titles[3].startswith("2-D, 2× Scott")


# -------------------------------------------------------------------------------------- coreset
@pytest.fixture(scope="module")
def bank():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1500, 2, generator=generator) * torch.tensor([4.0, 1.0])  # a 4 × 1 rectangle


def test_kcenter_covers_better_than_random(bank):
    for ratio in (0.02, 0.1):
        result = widgets.coreset_explore(bank, ratio, seed=0)
        assert len(result["kcenter_idxs"]) == len(result["random_idxs"]) == int(1500 * ratio)
        assert result["kcenter_radius"] < result["random_radius"]


def test_coverage_curve_prefixes_match_direct_runs(bank):
    from adlearn.components.kcenter_greedy import coverage_radius

    curve = widgets.coverage_curve(bank, ratios=(0.05, 0.01, 0.2), seed=3)
    np.testing.assert_array_equal(curve["ratios"], [0.01, 0.05, 0.2])
    np.testing.assert_array_equal(curve["sizes"], [15, 75, 300])
    for size, radius in zip(curve["sizes"], curve["kcenter_radius"]):
        assert coverage_radius(bank, kcenter_indices(bank, int(size), seed=3)) == pytest.approx(radius)
    assert np.all(np.diff(curve["kcenter_radius"]) <= 0)  # nested subsets: never worse
    assert np.all(curve["kcenter_radius"] <= curve["random_radius"])


def test_kcenter_indices_keep_exactly_size():
    # 100 · (29 / 100) is 28.999… in floating point; the helper must still return 29 rows.
    assert len(kcenter_indices(torch.randn(100, 3), 29)) == 29


def test_coreset_widget_follows_its_controls(bank):
    view = widgets.coreset_widget(bank, sampling_ratio=0.02, ratios=(0.01, 0.02, 0.1))
    chosen = view.figure.axes[0].collections[1]
    assert len(chosen.get_offsets()) == 30
    view.controls["sampling_ratio"].value = 0.1
    assert view.last_result["size"] == 150
    assert len(view.figure.axes[0].collections[1].get_offsets()) == 150
    assert len(view.figure.axes[1].collections[1].get_offsets()) == 150
    assert view.figure.axes[2].lines[-1].get_xdata()[0] == pytest.approx(0.1)  # the marker moved
    old_start = view.last_result["kcenter_idxs"][0]
    view.controls["seed"].value = 5
    assert view.last_result["kcenter_idxs"][0] != old_start  # another start point


def test_coreset_static_figure(bank):
    figure = widgets.coreset_static_figure(bank, ratios=(0.01, 0.1), curve_ratios=(0.01, 0.1))
    titles = axis_titles(figure)
    assert len(titles) == 5 and titles[0].startswith("k-center, 0.01 (15)")


# ----------------------------------------------------------------------------------------- flow
def test_toy_data_and_outliers_are_seeded_and_apart():
    inliers = widgets.make_toy_data("moons", n_samples=300, seed=1)
    np.testing.assert_array_equal(inliers, widgets.make_toy_data("moons", n_samples=300, seed=1))
    np.testing.assert_allclose(inliers.mean(axis=0), 0, atol=1e-5)
    outliers = widgets.make_outliers(inliers, n_samples=50, min_distance=0.4, seed=1)
    assert outliers.shape == (50, 2)
    assert torch.cdist(torch.tensor(outliers), torch.tensor(inliers)).min() > 0.4
    assert widgets.make_toy_data("ring", n_samples=100).shape == (100, 2)


def test_flow_is_invertible_and_layer_zero_is_the_standard_normal():
    flow = widgets.build_toy_flow(n_blocks=3, hidden=8, seed=0)
    x = torch.randn(20, 2)
    z, _ = flow(x)
    x_back, _ = flow(z, rev=True)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    expected = -0.5 * x.pow(2).sum(1) - np.log(2 * np.pi)  # log N(x; 0, I) in 2-D
    torch.testing.assert_close(widgets.flow_log_likelihood(flow, x, n_layers=0), expected)


def test_training_is_seeded_and_prefers_inliers(trained_flow):
    flow, losses, inliers, outliers = trained_flow
    assert losses[-20:].mean() < losses[:20].mean() - 0.5  # it learnt something
    result = widgets.flow_explore(flow, inliers, outliers)
    assert result["mean_log_likelihood_inliers"] > result["mean_log_likelihood_outliers"]
    assert result["median_log_likelihood_inliers"] > result["median_log_likelihood_outliers"] + 2
    assert result["auroc"] > 0.95
    # The trained model beats the untrained N(0, I) on its own data.
    before = widgets.flow_explore(flow, inliers, outliers, layer=0)
    assert result["mean_log_likelihood_inliers"] > before["mean_log_likelihood_inliers"] + 0.5
    # Same seed, same flow.
    again, again_losses = widgets.train_toy_flow(inliers, n_blocks=2, hidden=8, steps=5, seed=0)
    _, reference_losses = widgets.train_toy_flow(inliers, n_blocks=2, hidden=8, steps=5, seed=0)
    np.testing.assert_array_equal(again_losses, reference_losses)


def test_flow_density_integrates_to_about_one(trained_flow):
    flow, _, inliers, outliers = trained_flow
    result = widgets.flow_explore(flow, inliers, outliers, grid_points=120, limits=((-4, 4), (-4, 4)))
    cell = (result["grid_x"][1] - result["grid_x"][0]) * (result["grid_y"][1] - result["grid_y"][0])
    assert result["density"].sum() * cell == pytest.approx(1.0, abs=0.05)


def test_flow_widget_steps_through_layers(trained_flow):
    flow, _, inliers, outliers = trained_flow
    view = widgets.flow_widget(flow, inliers, outliers)
    # It starts at 0 blocks (the raw data), so "move the slider right" steps through the blocks.
    assert view.controls["layer"].value == view.last_result["layer"] == 0 < view.controls["layer"].max == len(flow)
    assert view.figure.axes[0].get_title() == f"points after 0 of {len(flow)} blocks"
    np.testing.assert_allclose(view.figure.axes[0].collections[0].get_offsets(), inliers)  # raw data
    view.controls["layer"].value = len(flow)
    assert view.figure.axes[0].get_title() == f"points after {len(flow)} of {len(flow)} blocks"
    assert not np.allclose(view.figure.axes[0].collections[0].get_offsets(), inliers)
    # The histogram's axis is log p; its title must not call that axis the score −log p.
    histogram = view.figure.axes[2]
    assert histogram.get_xlabel().startswith("log p(x)")
    assert histogram.get_title().startswith("log p(x); AUROC of the score −log p:")
    assert widgets.flow_widget(flow, inliers, outliers, layer=3).last_result["layer"] == 3


def test_flow_static_figure(trained_flow):
    flow, _, inliers, outliers = trained_flow
    figure = widgets.flow_static_figure(flow, inliers, outliers, layers=(0, len(flow)))
    titles = axis_titles(figure)
    assert len(titles) == 4 and titles[0].startswith("0 blocks") and titles[3].startswith(f"p_{len(flow)}(x)")
