"""The course widgets of notebooks 04, 10 and 25: mixtures (K, ε), PaDiM's maps (d, σ), U-Flow's NFA mask (ε).

Compute functions against independent references (scikit-learn's GaussianMixture / KMeans / f1_score /
roc_auc_score, SciPy's multivariate normal and Mahalanobis distance, hand-computed condition numbers) and
against the models they explain: the PaDiM widget's map for (d, σ) is ``Padim(n_features=d,
blur_sigma=σ)``'s ``predict`` map, the NFA widget's mask at ε is ``Uflow(nfa_epsilon=ε)``'s ``pred_mask``.
Views are driven headlessly through their controls, as in tests/test_widgets.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from tiny_models import TINY  # noqa: E402

from adlearn import widgets  # noqa: E402
from adlearn.models import NotFittedError, create  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def visible_titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_visible()]


def test_importing_the_course_widgets_stays_light():
    code = (
        "import sys; from adlearn.widgets import mixture, padim_maps, nfa; "
        "print('matplotlib' in sys.modules, 'ipywidgets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ============================================================================ 04: mixtures, K and ε
@pytest.fixture(scope="module")
def toy():
    return widgets.make_mixture_toy(seed=0)


def toy_args(toy):
    return toy["train"], toy["normal"], toy["anomalous"]


def test_toy_is_seeded_and_its_anomalies_keep_away_from_the_training_points(toy):
    again = widgets.make_mixture_toy(seed=0)
    for key in ("train", "normal", "anomalous"):
        np.testing.assert_array_equal(toy[key], again[key])
    assert toy["train"].shape == (300, 2) and toy["anomalous"].shape == (100, 2)
    gaps = np.sqrt(((toy["anomalous"][:, None] - toy["train"][None]) ** 2).sum(-1)).min(axis=1)
    assert gaps.min() > 0.35


@pytest.mark.parametrize("epsilon", [1e-4, 1e-2, 1.0])
def test_one_component_is_one_gaussian_with_epsilon_on_its_diagonal(toy, epsilon):
    from scipy.spatial.distance import mahalanobis
    from scipy.stats import multivariate_normal

    train, normal, anomalous = toy_args(toy)
    covariance = np.cov(train.T, bias=True) + epsilon * np.eye(2)  # the ML covariance, + ε I
    reference = multivariate_normal(mean=train.mean(axis=0), cov=covariance)
    result = widgets.mixture_explore(train, normal, anomalous, n_components=1, regularization=epsilon)
    np.testing.assert_allclose(result["covariances"][0], covariance, rtol=1e-9)
    np.testing.assert_allclose(result["scores_normal"], -reference.logpdf(normal), rtol=1e-9)
    np.testing.assert_allclose(result["scores_anomalous"], -reference.logpdf(anomalous), rtol=1e-9)

    kmeans = widgets.mixture_explore(train, normal, anomalous, 1, epsilon, method="k-means")
    inverse = np.linalg.inv(covariance)
    expected = [mahalanobis(x, train.mean(axis=0), inverse) for x in anomalous]
    np.testing.assert_allclose(kmeans["scores_anomalous"], expected, rtol=1e-9)


@pytest.mark.parametrize("epsilon", [1e-4, 1e-2])
def test_mixture_matches_sklearn(toy, epsilon):
    from sklearn.mixture import GaussianMixture

    train, normal, anomalous = toy_args(toy)
    result = widgets.mixture_explore(train, normal, anomalous, n_components=3, regularization=epsilon)
    assert result["converged"]
    reference = GaussianMixture(3, reg_covar=epsilon, tol=1e-9, max_iter=2000, n_init=4, random_state=0).fit(train)
    order, reference_order = (
        np.argsort(result["means"][:, 1] + result["means"][:, 0] / 10),
        np.argsort(reference.means_[:, 1] + reference.means_[:, 0] / 10),
    )
    np.testing.assert_allclose(result["means"][order], reference.means_[reference_order], atol=1e-3)
    np.testing.assert_allclose(result["weights"][order], reference.weights_[reference_order], atol=1e-3)
    for name, points in (("normal", normal), ("anomalous", anomalous)):
        np.testing.assert_allclose(result[f"scores_{name}"], -reference.score_samples(points), rtol=1e-3, atol=1e-3)
    # three groups, three components: the anomalies in the gaps are found
    assert result["auroc"] > 0.95 > widgets.mixture_explore(train, normal, anomalous, 1, epsilon)["auroc"]


def test_kmeans_score_is_the_mahalanobis_distance_to_the_nearest_cluster(toy):
    from scipy.spatial.distance import mahalanobis
    from sklearn.cluster import KMeans

    train, normal, anomalous = toy_args(toy)
    epsilon = 0.05
    result = widgets.mixture_explore(train, normal, anomalous, 3, epsilon, method="k-means")
    reference = KMeans(n_clusters=3, n_init=10, random_state=0).fit(train)
    order, reference_order = np.argsort(result["means"][:, 0]), np.argsort(reference.cluster_centers_[:, 0])
    np.testing.assert_allclose(result["means"][order], reference.cluster_centers_[reference_order], atol=1e-9)
    # brute force: every cluster's biased covariance + ε I, then the smallest distance
    inverses = []
    for k in range(3):
        members = train[reference.labels_ == k]
        inverses.append(np.linalg.inv(np.cov(members.T, bias=True) + epsilon * np.eye(2)))
    expected = [min(mahalanobis(x, reference.cluster_centers_[k], inverses[k]) for k in range(3)) for x in anomalous]
    np.testing.assert_allclose(result["scores_anomalous"], expected, rtol=1e-9)


def test_mahalanobis_to_components_matches_scipy():
    from scipy.spatial.distance import mahalanobis

    rng = np.random.default_rng(3)
    points, means = rng.normal(size=(7, 3)), rng.normal(size=(2, 3))
    factors = rng.normal(size=(2, 3, 3))
    covariances = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(3)
    distances = widgets.mahalanobis_to_components(
        torch.from_numpy(points), torch.from_numpy(means), torch.from_numpy(covariances)
    ).numpy()
    expected = [[mahalanobis(x, m, np.linalg.inv(c)) for m, c in zip(means, covariances)] for x in points]
    np.testing.assert_allclose(distances, expected, rtol=1e-10)


def test_epsilon_lowers_the_condition_number_as_computed_by_hand():
    # Four points: variance 2 along x, 0.005 along y (biased: divided by N = 4), no covariance.
    train = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, -0.1], [0.0, 0.1]])
    probes = np.array([[0.0, 0.0], [1.0, 1.0]])
    expected = {0.0: 2 / 0.005, 0.01: 2.01 / 0.015, 1.0: 3.0 / 1.005}  # κ = (λ_max + ε) / (λ_min + ε)
    for epsilon, kappa in expected.items():
        for method in ("mixture", "k-means"):
            result = widgets.mixture_explore(train, probes, probes, 1, epsilon, method=method)
            assert result["condition_numbers"][0] == pytest.approx(kappa, rel=1e-9)
    assert expected[0.0] > expected[0.01] > expected[1.0]  # 400 > 134 > 2.99


def test_epsilon_rounds_every_component_on_the_toy(toy):
    worst = [
        widgets.mixture_explore(*toy_args(toy), 3, epsilon)["condition_numbers"].max() for epsilon in (1e-6, 1e-2, 1)
    ]
    assert worst[0] > worst[1] > worst[2] >= 1


def test_mixture_explore_rejects_what_it_cannot_draw(toy):
    train, normal, anomalous = toy_args(toy)
    with pytest.raises(ValueError, match="project"):
        widgets.mixture_explore(np.zeros((10, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="method"):
        widgets.mixture_explore(train, normal, anomalous, method="dbscan")
    with pytest.raises(ValueError, match="n_components"):
        widgets.mixture_explore(train[:3], normal, anomalous, n_components=4)
    with pytest.raises(ValueError, match="regularization"):
        widgets.mixture_explore(train, normal, anomalous, regularization=-1.0)


def test_mixture_widget_follows_its_controls(toy):
    from matplotlib.patches import Ellipse

    view = widgets.mixture_widget(*toy_args(toy), n_components=1, regularization=1e-2)
    scene = view.figure.axes[0]
    assert sum(isinstance(p, Ellipse) for p in scene.patches) == 1
    assert scene.get_title().startswith("1 Gaussians, ε = 0.01: AUROC")
    one = view.last_result["auroc"]

    view.controls["n_components"].value = 3
    scene = view.figure.axes[0]
    assert view.last_result["n_components"] == 3 and sum(isinstance(p, Ellipse) for p in scene.patches) == 3
    assert view.last_result["auroc"] > one
    kappa = view.last_result["condition_numbers"].max()

    view.controls["regularization"].value = 1.0
    assert view.last_result["regularization"] == 1.0
    assert view.last_result["condition_numbers"].max() < kappa
    assert (
        view.figure.axes[1].get_title()
        == f"largest condition number κ = {view.last_result['condition_numbers'].max():.3g}"
    )

    view.controls["method"].value = "k-means"
    assert view.last_result["method"] == "k-means" and view.last_result["converged"] is None
    assert view.figure.axes[0].get_title().startswith("3 k-means clusters, ε = 1:")
    assert view.figure.axes[1].get_xlabel() == "min_k Mahalanobis"
    assert view.n_updates == 4


def test_mixture_static_figure(toy):
    figure = widgets.mixture_static_figure(
        *toy_args(toy), settings=((1, 0.01), (3, 1e-6)), methods=("mixture", "k-means")
    )
    titles = visible_titles(figure)
    assert len(titles) == 4
    assert titles[0].startswith("K = 1, ε = 0.01: AUROC") and titles[3].startswith("k-means K = 3, ε = 1e-06: AUROC")


# ============================================================================ 10: PaDiM's maps, d and σ
SEED = 3  # not 0: the channel choice must follow the model's seed


@pytest.fixture(scope="module")
def padim_setup(datasets_64):
    train, test = datasets_64
    model = create("padim", **{**TINY["padim"], "n_features": None}, device="cpu", seed=SEED)
    return model, train, test, widgets.PadimFeatures(model, train, test)


def test_random_channel_choice_is_a_prefix_of_one_permutation():
    from adlearn.models.padim import random_channel_index

    full = random_channel_index(176, 176, seed=5)
    assert sorted(full.tolist()) == list(range(176))
    for d in (1, 10, 100):
        assert torch.equal(random_channel_index(176, d, seed=5), full[:d])
    assert not torch.equal(random_channel_index(176, 10, seed=6), full[:10])


@pytest.mark.parametrize(("n_features", "blur_sigma"), [(6, 4.0), (25, 1.5)])
def test_padim_widget_map_is_padims_predict_map(padim_setup, n_features, blur_sigma):
    from sklearn.metrics import roc_auc_score

    model, train, test, features = padim_setup
    padim = create(
        "padim", **{**TINY["padim"], "n_features": n_features}, blur_sigma=blur_sigma, device="cpu", seed=SEED
    ).fit(train)
    assert torch.equal(padim.channel_index, features.channel_order[:n_features])  # same seed, same channels
    expected = padim.predict(features.images).anomaly_map  # (M, H, W)
    result = widgets.padim_maps_explore(features, n_features, blur_sigma)
    torch.testing.assert_close(torch.from_numpy(result["maps"]), expected, rtol=1e-5, atol=1e-5)
    masks = features.masks.numpy().ravel() > 0.5
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks, expected.numpy().ravel()), abs=1e-9)
    image_scores = expected.flatten(1).amax(dim=1).numpy()
    assert result["image_auroc"] == pytest.approx(roc_auc_score(features.labels, image_scores), abs=1e-9)
    assert result["label"] == 1 and result["image_index"] == int(np.flatnonzero(features.labels == 1)[0])
    np.testing.assert_array_equal(result["map"], result["maps"][result["image_index"]])


def test_padim_features_refit_only_when_d_changes(padim_setup, monkeypatch):
    from adlearn.components import MultiVariateGaussian

    features = padim_setup[3]
    assert features.max_features == 24 + 40 + 112 and features.train_embedding.shape[1] == 176
    fits = []
    original = MultiVariateGaussian.fit
    monkeypatch.setattr(MultiVariateGaussian, "fit", lambda self, x: fits.append(x.shape[1]) or original(self, x))
    features._raw.clear()
    sharp, smooth = features.maps(12, 1.0), features.maps(12, 6.0)  # one fit, two blurs
    assert fits == [12] and not torch.allclose(sharp, smooth)
    assert smooth.std() < sharp.std()  # a wider blur flattens the map
    features.maps(13, 1.0), features.maps(12, 2.0), features.maps(14, 1.0)
    assert fits == [12, 13, 14]  # 12 was still cached
    for d in (15, 16, 12, 13):
        features.maps(d, 1.0)
    # At most CACHED_D = 4 are kept, the least recently used dropped: 16 pushed out 13, 12 was used again.
    assert fits == [12, 13, 14, 15, 16, 13]
    assert list(features._raw) == [15, 16, 12, 13]


def test_padim_features_reject_bad_settings(padim_setup):
    model, train, test, features = padim_setup
    with pytest.raises(ValueError, match="n_features must be in 1..176"):
        features.maps(177, 4.0)
    with pytest.raises(ValueError, match="blur_sigma must be > 0"):
        features.maps(10, 0.0)
    with pytest.raises(ValueError, match="image_index"):
        widgets.padim_maps_explore(features, 10, 4.0, image_index=len(test))
    with pytest.raises(TypeError, match="Padim"):
        widgets.PadimFeatures(create("dfm", **TINY["dfm"], device="cpu"), train, test)
    with pytest.raises(ValueError, match="max_features"):
        widgets.PadimFeatures(model, train, test, max_features=500)


def test_padim_maps_widget_follows_its_controls(padim_setup):
    features = padim_setup[3]
    view = widgets.padim_maps_widget(features, n_features=10, blur_sigma=4.0)
    assert view.controls["n_features"].max == 176
    blurred = view.figure.axes[2]
    assert blurred.get_title() == f"d = 10, σ = 4: pixel AUROC {view.last_result['pixel_auroc']:.3f}"
    before = blurred.images[0].get_array().copy()

    view.controls["n_features"].value = 40
    assert view.last_result["n_features"] == 40
    assert view.figure.axes[1].get_title() == "Mahalanobis, d = 40, no blur"
    assert not np.allclose(view.figure.axes[2].images[0].get_array(), before)

    view.controls["blur_sigma"].value = 8.0
    assert view.figure.axes[2].get_title().startswith("d = 40, σ = 8: pixel AUROC")
    np.testing.assert_array_equal(view.figure.axes[2].images[0].get_array(), view.last_result["map"])

    normal = int(np.flatnonzero(features.labels == 0)[0])
    view.controls["image_index"].value = normal
    assert view.last_result["label"] == 0 and "(normal)" in view.figure.axes[0].get_title()
    assert view.n_updates == 4


def test_padim_maps_static_figure(padim_setup):
    figure = widgets.padim_maps_static_figure(padim_setup[3], settings=((5, 4.0), (40, 1.0)))
    titles = visible_titles(figure)
    assert len(titles) == 3 and titles[0].startswith("test image") and titles[2].startswith("d = 40, σ = 1\n")


# ============================================================================ 25: U-Flow's NFA mask, ε
UFLOW = {**TINY["uflow"], "blur_sigma": 2.0}  # the blurred map, as in the cpu preset


@pytest.fixture(scope="module")
def uflow_setup(datasets_64):
    train, test = datasets_64
    model = create("uflow", **UFLOW, device="cpu", seed=0)
    model.fit(train, verbose=False)
    return model, test, widgets.UflowOutputs(model, test)


def test_nfa_widget_mask_is_uflows_mask_at_that_epsilon(uflow_setup):
    model, test, outputs = uflow_setup
    expected_maps = model.predict(outputs.images).anomaly_map
    torch.testing.assert_close(outputs.anomaly_maps, expected_maps)
    flagged = []
    for log10_epsilon in (0.0, 2.0, 2.4, 2.6, 3.0):
        result = widgets.nfa_explore(outputs, log10_epsilon)
        same_epsilon = create("uflow", **UFLOW, nfa_epsilon=10**log10_epsilon, device="cpu", seed=0)
        same_epsilon.load_state_dict(model.state_dict())  # the same weights, another ε
        np.testing.assert_array_equal(result["mask"], same_epsilon.predict(outputs.images).pred_mask.numpy())
        flagged.append(result["flagged_pixels"])
    assert flagged == sorted(flagged)  # a larger ε flags more
    assert any(0 < n < outputs.masks.numel() for n in flagged)  # some ε gives a partial mask: the check bites


def test_nfa_f1_matches_sklearn(uflow_setup):
    from sklearn.metrics import f1_score

    _, _, outputs = uflow_setup
    truth = outputs.masks.numpy() > 0.5
    for log10_epsilon in (2.4, 2.8):
        result = widgets.nfa_explore(outputs, log10_epsilon)
        assert result["f1"] == pytest.approx(f1_score(truth.ravel(), result["mask"].ravel()), abs=1e-12)
        index = result["image_index"]
        assert result["image_f1"] == pytest.approx(f1_score(truth[index].ravel(), result["mask"][index].ravel()))
    # the best threshold's mask has the F1-max, and no NFA mask beats it
    assert result["f1max"] == pytest.approx(f1_score(truth.ravel(), result["f1max_mask"].ravel()), abs=1e-12)
    assert result["f1max"] >= max(widgets.nfa_explore(outputs, e)["f1"] for e in (0.0, 2.4, 2.8, 3.2))
    normal = int(np.flatnonzero(outputs.labels == 0)[0])
    assert np.isnan(widgets.nfa_explore(outputs, 2.4, image_index=normal)["image_f1"])  # nothing to find


def test_uflow_outputs_reject_what_they_cannot_use(uflow_setup, datasets_64):
    train, test = datasets_64
    with pytest.raises(TypeError, match="Uflow"):
        widgets.UflowOutputs(create("padim", **TINY["padim"], device="cpu"), test)
    with pytest.raises(NotFittedError, match="fit"):
        widgets.UflowOutputs(create("uflow", **UFLOW, device="cpu"), test)
    normal_only = [test[i] for i in range(len(test)) if test[i]["label"] == 0]
    with pytest.raises(ValueError, match="no defect pixel"):
        widgets.UflowOutputs(uflow_setup[0], normal_only)


def test_nfa_widget_follows_its_controls(uflow_setup):
    _, _, outputs = uflow_setup
    view = widgets.nfa_widget(outputs, log10_epsilon=0.0)
    assert view.controls["log10_epsilon"].max == np.ceil(2 * np.log10(outputs.n_tests) + 1) / 2
    mask_panel = view.figure.axes[3]
    assert mask_panel.get_title().startswith(f"NFA < ε = 1: F1 {view.last_result['f1']:.3f}")
    assert view.figure.axes[4].get_title().startswith(f"best threshold (uses the labels): F1 {outputs.f1max:.3f}")

    view.controls["log10_epsilon"].value = 3.0
    assert view.last_result["epsilon"] == pytest.approx(1000.0)
    assert view.figure.axes[3].get_title().startswith("NFA < ε = 1000: F1")
    index = view.last_result["image_index"]
    np.testing.assert_array_equal(view.figure.axes[3].images[0].get_array(), view.last_result["mask"][index])

    view.controls["image_index"].value = index + 1
    assert view.figure.axes[0].get_title() == f"test image {index + 1} (truth in red)"
    assert view.n_updates == 3


def test_nfa_static_figure(uflow_setup):
    figure = widgets.nfa_static_figure(uflow_setup[2], log10_epsilons=(0.0, 2.5))
    titles = visible_titles(figure)
    assert len(titles) == 6  # image, map, log-NFA; two masks and the best threshold's
    assert titles[3].startswith("NFA < ε = 1:") and titles[4].startswith("NFA < ε = 316:")
    assert titles[5].startswith("best threshold")
