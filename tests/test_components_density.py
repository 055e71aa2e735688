"""Reference tests for the density / flow / clustering components (MODELS.md A.3, A.6, A.7, A.8.1).

Oracles are independent of our code: ``torch.autograd.functional.jacobian`` for flow log-dets,
``scipy.stats.gaussian_kde`` for the KDE, scikit-learn for GMM and KMeans, and anomalib's
documented GMM example. Tolerances are stated next to each check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from adlearn.components import NotFittedError
from adlearn.components.flow import AllInOneBlock, FlowSequence, SequenceFlow, subnet_conv, subnet_fc
from adlearn.components.gaussian_kde import GaussianKDE
from adlearn.components.gmm import GaussianMixture
from adlearn.components.kmeans import KMeans

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


# =============================================================================== flows
def _subnet_for(n_spatial: int):
    """An MLP for (B, C), Conv1d for (B, C, L), Conv2d for (B, C, H, W)."""
    if n_spatial == 0:
        return subnet_fc(16)
    return subnet_conv(3, 1.5, spatial_dims=n_spatial)


SHAPES = {"vector": (5,), "sequence": (4, 6), "image": (4, 3, 3)}
CONFIGS = {
    "plain": {},
    "conditioned": {"condition": 3},
    "gin": {"gin_block": True},
    "soft_permutation": {"permute_soft": True},
    "householder": {"learned_householder_permutation": 3},
    "reverse_permutation": {"reverse_permutation": True, "condition": 2},
    "sigmoid": {"global_affine_type": "SIGMOID", "global_affine_init": 1.5},
    "exp": {"global_affine_type": "EXP", "global_affine_init": 0.7},
}


def _make_block(shape, config, seed=0):
    """A float64 block with randomised parameters (so the coupling is far from identity) and
    matching random inputs/conditions. Returns (block, x, conditions or None)."""
    torch.manual_seed(seed)
    config = dict(config)
    cond_channels = config.pop("condition", 0)
    dims_c = [(cond_channels, *shape[1:])] if cond_channels else None
    # Built in float64 so the random soft rotation is orthogonal to float64 precision.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        block = AllInOneBlock([shape], dims_c=dims_c, subnet_constructor=_subnet_for(len(shape) - 1), **config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        for module in block.subnet.modules():  # larger subnet outputs -> tanh really clamps
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.weight.mul_(4.0)
    x = torch.randn(3, *shape, dtype=torch.float64)
    conditions = [torch.randn(3, cond_channels, *shape[1:], dtype=torch.float64)] if cond_channels else None
    return block, x, conditions


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_all_in_one_block_inverts_and_log_det_matches_jacobian(shape_name, config_name):
    shape = SHAPES[shape_name]
    block, x, conditions = _make_block(shape, CONFIGS[config_name])

    with torch.no_grad():
        (y,), log_det = block((x,), c=conditions)
        (x_back,), log_det_rev = block((y,), c=conditions, rev=True)
    assert y.shape == x.shape and log_det.shape == (x.shape[0],)
    # reverse(forward(x)) == x (asked: 1e-5; in float64 it holds to ~1e-12).
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det_rev, -log_det, atol=1e-8, rtol=0)

    # log|det J| of one sample, from autograd (flattened per sample), vs the block's log-det.
    for i in range(x.shape[0]):
        cond_i = [conditions[0][i : i + 1]] if conditions else None

        def one_sample(flat, i=i, cond_i=cond_i):
            (out,), _ = block((flat.reshape(1, *shape),), c=cond_i)
            return out.flatten()

        jacobian = torch.autograd.functional.jacobian(one_sample, x[i].flatten())
        _, log_abs_det = torch.linalg.slogdet(jacobian)
        assert abs(float(log_abs_det) - float(log_det[i])) < 1e-8, (shape_name, config_name, i)

    if config_name == "gin":  # volume preserving: exactly zero log-det
        assert log_det.abs().max() < 1e-10


def test_all_in_one_block_accepts_bare_tensors_and_default_init_is_near_identity():
    torch.manual_seed(0)
    block = AllInOneBlock([(6, 4, 4)], subnet_constructor=subnet_conv(1, 1.0))
    x = torch.randn(2, 6, 4, 4)
    (y_tuple,), log_det_tuple = block((x,))
    (y_bare,), log_det_bare = block(x)
    torch.testing.assert_close(y_tuple, y_bare)
    torch.testing.assert_close(log_det_tuple, log_det_bare)
    # Psi(gamma) starts at global_affine_init = 1 for every activation type.
    for kind, init in [("SOFTPLUS", 1.0), ("SIGMOID", 2.0), ("EXP", 0.5)]:
        b = AllInOneBlock([(4,)], subnet_constructor=subnet_fc(8), global_affine_type=kind, global_affine_init=init)
        torch.testing.assert_close(b.global_scale_activation(), torch.full((1, 4), init))
    assert block.output_dims([(6, 4, 4)]) == [(6, 4, 4)]
    # Odd channel count: C1 = C - C//2 conditions, C2 = C//2 transformed.
    odd = AllInOneBlock([(5,)], subnet_constructor=subnet_fc(8))
    assert (odd.split_len1, odd.split_len2) == (3, 2)
    assert odd.subnet[0].in_features == 3 and odd.subnet[-1].out_features == 4


def test_gin_coupling_has_zero_log_det_and_global_scale_is_skipped():
    block, x, _ = _make_block((4, 3, 3), {"gin_block": True})
    (_,), log_det = block((x,))
    assert torch.allclose(log_det, torch.zeros_like(log_det), atol=1e-10)


def test_permutation_is_orthogonal():
    torch.manual_seed(1)
    for kwargs in [{}, {"permute_soft": True}, {"learned_householder_permutation": 2}]:
        block = AllInOneBlock([(7,)], subnet_constructor=subnet_fc(8), **kwargs)
        w = block.permutation_matrix()
        torch.testing.assert_close(w @ w.T, torch.eye(7), atol=1e-5, rtol=0)
    hard = AllInOneBlock([(7,)], subnet_constructor=subnet_fc(8)).permutation
    assert set(hard.sum(0).tolist()) == {1.0} and set(hard.unique().tolist()) == {0.0, 1.0}


def test_all_in_one_block_errors():
    with pytest.raises(ValueError, match="subnet_constructor"):
        AllInOneBlock([(4,)])
    with pytest.raises(ValueError, match="non-channel"):
        AllInOneBlock([(4, 8, 8)], dims_c=[(2, 4, 4)], subnet_constructor=subnet_conv())
    with pytest.raises(ValueError, match="global_affine_type"):
        AllInOneBlock([(4,)], subnet_constructor=subnet_fc(8), global_affine_type="RELU")
    with pytest.raises(ValueError, match="at least 2 channels"):
        AllInOneBlock([(1,)], subnet_constructor=subnet_fc(8))
    block = AllInOneBlock([(4,)], dims_c=[(3,)], subnet_constructor=subnet_fc(8))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        block((torch.randn(2, 5),), c=[torch.randn(2, 3)])
    with pytest.raises(ValueError, match="condition"):
        block((torch.randn(2, 4),))  # condition missing
    with pytest.raises(ValueError, match="condition"):
        block((torch.randn(2, 4),), c=[torch.randn(2, 2)])  # wrong condition channels


def test_sequence_flow_chains_blocks_and_inverts():
    torch.manual_seed(0)
    blocks = [
        AllInOneBlock([(6,)], dims_c=[(4,)], subnet_constructor=subnet_fc(hidden_ratio=2.0), affine_clamping=1.9)
        for _ in range(4)
    ]
    flow = SequenceFlow(blocks).double()
    assert FlowSequence is SequenceFlow and len(flow) == 4
    x = torch.randn(8, 6, dtype=torch.float64)
    cond = torch.randn(8, 4, dtype=torch.float64)
    z, log_det = flow(x, c=[cond])
    expected, h = torch.zeros(8, dtype=torch.float64), x
    for block in blocks:
        (h,), ld = block((h,), c=[cond])
        expected = expected + ld
    torch.testing.assert_close(z, h)
    torch.testing.assert_close(log_det, expected)
    x_back, log_det_rev = flow(z, c=[cond], rev=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_rev, -log_det)


def test_subnet_constructors_shapes():
    conv = subnet_conv(kernel_size=3, hidden_ratio=0.5)(8, 12)
    assert conv[0].in_channels == 8 and conv[0].out_channels == 4 and conv[2].out_channels == 12
    assert conv(torch.randn(1, 8, 5, 7)).shape == (1, 12, 5, 7)  # "same" padding
    assert subnet_conv(kernel_size=1)(4, 6)(torch.randn(1, 4, 3, 3)).shape == (1, 6, 3, 3)
    fc = subnet_fc(hidden_ratio=2.0)(10, 4)  # CFLOW: Linear(c, 2c) -> ReLU -> Linear(2c, out)
    assert fc[0].out_features == 20 and fc[2].out_features == 4
    with pytest.raises(ValueError):
        subnet_conv(kernel_size=2)


@pytest.mark.parametrize("device", DEVICES)
def test_flow_on_device(device):
    torch.manual_seed(0)
    flow = SequenceFlow(
        [AllInOneBlock([(8, 6, 6)], subnet_constructor=subnet_conv(3 if i % 2 == 0 else 1)) for i in range(2)]
    ).to(device)
    x = torch.randn(2, 8, 6, 6, device=device)
    z, log_det = flow(x)
    assert z.device.type == device and log_det.shape == (2,)
    x_back, _ = flow(z, rev=True)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)


# =============================================================================== Gaussian KDE
def _correlated_data(n=300, d=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.tensor(
        [[1.0, 0.5, 0.0, 0.2], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 2.0, 0.1], [0.0, 0.0, 0.0, 0.5]], dtype=dtype
    )[:d, :d]
    return torch.randn(n, d, generator=generator, dtype=dtype) @ mixing


def test_gaussian_kde_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    data = _correlated_data()
    queries = torch.cat([_correlated_data(40, seed=1), 3 * _correlated_data(20, seed=2)])
    reference = scipy_stats.gaussian_kde(data.numpy().T)  # Scott's bandwidth, unbiased covariance

    kde = GaussianKDE(data)  # fitted at construction
    np.testing.assert_allclose(kde(queries).numpy(), reference(queries.numpy().T), rtol=1e-4)
    np.testing.assert_allclose(
        kde.log_density(queries).numpy(), reference.logpdf(queries.numpy().T), rtol=1e-4, atol=1e-8
    )
    # Chunking changes nothing.
    small_chunks = GaussianKDE(data, chunk_elements=700)
    torch.testing.assert_close(small_chunks(queries), kde(queries))


def test_gaussian_kde_cov_is_unbiased_and_does_not_mutate():
    data = _correlated_data(50).T.contiguous()  # (D, N): rows are variables
    copy = data.clone()
    np.testing.assert_allclose(GaussianKDE.cov(data).numpy(), np.cov(copy.numpy()), rtol=1e-10)
    assert torch.equal(data, copy)


def test_gaussian_kde_log_density_is_stable_in_float32():
    kde = GaussianKDE(_correlated_data(dtype=torch.float32))
    far = torch.full((2, 3), 1e3)
    assert kde(far).eq(0).all()  # the density underflows ...
    assert torch.isfinite(kde.log_density(far)).all()  # ... its log does not


def test_gaussian_kde_state_dict_round_trip():
    kde = GaussianKDE(_correlated_data(dtype=torch.float32))
    fresh = GaussianKDE()
    fresh.load_state_dict(kde.state_dict())
    queries = _correlated_data(10, seed=3, dtype=torch.float32)
    torch.testing.assert_close(fresh(queries), kde(queries), rtol=0, atol=0)


def test_gaussian_kde_errors():
    kde = GaussianKDE()
    with pytest.raises(NotFittedError):
        kde(torch.randn(3, 2))
    with pytest.raises(ValueError, match="empty"):
        kde.fit(torch.empty(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        kde.fit(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kde.fit(torch.randn(10))
    with pytest.raises(ValueError, match="singular"):
        kde.fit(torch.randn(3, 5))  # fewer points than dimensions
    dependent = torch.randn(50, 2)
    with pytest.raises(ValueError, match="singular"):
        kde.fit(torch.cat([dependent, dependent.sum(1, keepdim=True)], dim=1))  # rank 2 in 3-D
    kde.fit(torch.randn(50, 2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        kde(torch.randn(4, 3))


# =============================================================================== KDEClassifier
def _features(n, d=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, d, generator=generator)
    # Mostly 6-dimensional structure plus a little noise in every direction.
    return torch.randn(n, 6, generator=generator) @ basis + 0.05 * torch.randn(n, d, generator=generator)


def test_kde_classifier_probabilities_fall_with_density():
    from adlearn.components.kde_classifier import KDEClassifier

    clf = KDEClassifier(n_pca_components=4)
    assert clf.fit(_features(300)) is True
    queries = torch.cat([_features(30, seed=1), 3 * _features(30, seed=2)])
    log_density = clf.compute_kde_scores(queries, as_log_likelihood=True)
    probabilities = clf.predict(queries)
    torch.testing.assert_close(clf(queries), probabilities)
    torch.testing.assert_close(clf.compute_kde_scores(queries), torch.exp(log_density))
    order = torch.argsort(log_density)
    assert (probabilities[order].diff() <= 1e-7).all()  # higher density -> lower probability
    assert ((probabilities > 0) & (probabilities < 1)).all()

    scores = torch.linspace(-200, 200, 101, dtype=torch.float64)
    expected = 1 / (1 + np.exp(0.05 * (scores.numpy() - 12)))  # seed 002's steepness / offset
    np.testing.assert_allclose(KDEClassifier.compute_probabilities(scores).numpy(), expected, rtol=1e-12)
    assert float(KDEClassifier.compute_probabilities(torch.tensor(12.0))) == 0.5


def test_kde_classifier_too_few_points_warns_and_returns_false():
    from adlearn.components.kde_classifier import KDEClassifier

    clf = KDEClassifier()  # n_pca_components = 16
    with pytest.warns(RuntimeWarning, match=r"N=10.*n_pca_components=16"):
        assert clf.fit(_features(10)) is False
    with pytest.warns(RuntimeWarning, match="singular"):  # 16 centred points span 15 dims
        assert clf.fit(_features(16)) is False
    with pytest.raises(ValueError, match=r"N=10.*n_pca_components=16"):
        clf.fit(_features(10), strict=True)
    with pytest.raises(NotFittedError):
        clf.predict(_features(3))
    # A failed refit leaves a fitted classifier as it was.
    small = KDEClassifier(n_pca_components=4)
    assert small.fit(_features(100))
    before = small.predict(_features(5, seed=9))
    with pytest.warns(RuntimeWarning):
        assert small.fit(_features(4, seed=3)) is False
    torch.testing.assert_close(small.predict(_features(5, seed=9)), before, rtol=0, atol=0)


def test_kde_classifier_scaling_methods():
    from adlearn.components.kde_classifier import FeatureScalingMethod, KDEClassifier

    assert FeatureScalingMethod("norm") is FeatureScalingMethod.NORM and FeatureScalingMethod.SCALE == "scale"
    stack = torch.randn(20, 4)
    untouched = stack.clone()

    scale = KDEClassifier(n_pca_components=4, feature_scaling_method="scale")
    scaled, max_length = scale.pre_process(stack)
    torch.testing.assert_close(max_length, stack.norm(dim=1).max())
    torch.testing.assert_close(scaled.norm(dim=1).max(), torch.tensor(1.0))
    torch.testing.assert_close(scale.pre_process(stack, torch.tensor(2.0))[0], stack / 2)
    assert torch.equal(stack, untouched)  # not modified in place

    norm = KDEClassifier(n_pca_components=4, feature_scaling_method=FeatureScalingMethod.NORM)
    normed, _ = norm.pre_process(stack)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(20))

    # After fit, SCALE stores the largest projected training norm: training vectors fill the unit ball.
    train = _features(200)
    scale.fit(train)
    projected = scale.pca_model.transform(train)
    torch.testing.assert_close(scale.max_length, projected.norm(dim=1).max())
    assert norm.fit(train) and torch.isfinite(norm.predict(train)).all()

    with pytest.raises(ValueError, match="feature_scaling_method"):
        KDEClassifier(feature_scaling_method="minmax")


def test_kde_classifier_subsamples_reproducibly_and_round_trips():
    from adlearn.components.kde_classifier import KDEClassifier

    train = _features(500)
    clf = KDEClassifier(n_pca_components=4, max_training_points=120)
    assert clf.fit(train)
    assert clf.kde_model.dataset.shape == (120, 4)
    again = KDEClassifier(n_pca_components=4, max_training_points=120)
    again.fit(train)
    torch.testing.assert_close(again.kde_model.dataset, clf.kde_model.dataset)  # seeded subset

    fresh = KDEClassifier(n_pca_components=4, max_training_points=120)
    fresh.load_state_dict(clf.state_dict())
    queries = _features(20, seed=5)
    torch.testing.assert_close(fresh.predict(queries), clf.predict(queries), rtol=0, atol=0)
    assert float(fresh.max_length) == float(clf.max_length)


# =============================================================================== Gaussian mixture
DOC_DATA = [[2, 1], [2, 2], [2, 3], [7, 5], [8, 5], [9, 5]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_mixture_doc_example(seed):
    data = torch.tensor(DOC_DATA, dtype=torch.float32)
    gmm = GaussianMixture(n_components=2, seed=seed)
    gmm.fit(data)
    means = sorted(tuple(round(v, 4) for v in row) for row in gmm.means.tolist())
    assert means == [(2.0, 2.0), (8.0, 5.0)]
    # Exact values from the anomalib documentation (biased covariances + 1e-6 jitter).
    torch.testing.assert_close(
        gmm.score_samples(data), torch.tensor([3.8295, 4.5795, 3.8295, 3.8295, 4.5795, 3.8295]), atol=1e-4, rtol=0
    )
    labels = gmm.predict(data).tolist()  # doc: [1, 1, 1, 0, 0, 0], up to permutation
    assert labels[:3] == [labels[0]] * 3 and labels[3:] == [1 - labels[0]] * 3
    torch.testing.assert_close(gmm.weights, torch.tensor([0.5, 0.5]))


def test_gaussian_mixture_matches_sklearn_on_blobs():
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0], [0.0, 8.0, 8.0]])
    scales = np.array([1.0, 0.5, 1.5])
    data = np.concatenate([c + s * rng.standard_normal((200, 3)) for c, s in zip(centers, scales)])
    data = data @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])  # correlate

    reference = mixture.GaussianMixture(3, covariance_type="full", random_state=0).fit(data)
    gmm = GaussianMixture(3, seed=0)
    gmm.fit(torch.tensor(data, dtype=torch.float32))
    ours = float(gmm.score_samples(torch.tensor(data)).mean())
    assert abs(ours - reference.score(data)) < 1e-3  # mean log-likelihood, same optimum
    # Same clusters: every fitted mean is within 0.05 of one of sklearn's.
    distance = torch.cdist(gmm.means.double(), torch.tensor(reference.means_))
    assert distance.min(dim=1).values.max() < 0.05
    np.testing.assert_allclose(sorted(gmm.weights.tolist()), sorted(reference.weights_), atol=1e-3)


def test_gaussian_mixture_state_dict_warning_and_errors():
    data = torch.tensor(DOC_DATA, dtype=torch.float32)
    gmm = GaussianMixture(2, seed=0)
    with pytest.raises(NotFittedError):
        gmm.score_samples(data)
    gmm.fit(data)
    fresh = GaussianMixture(2)
    fresh.load_state_dict(gmm.state_dict())
    torch.testing.assert_close(fresh.score_samples(data), gmm.score_samples(data), rtol=0, atol=0)
    torch.testing.assert_close(fresh.predict(data), gmm.predict(data))

    blobs = torch.cat([torch.randn(50, 2), torch.randn(50, 2) + 3])
    with pytest.warns(RuntimeWarning, match="did not converge"):
        GaussianMixture(2, n_iter=1, tol=0.0, seed=0).fit(blobs)

    with pytest.raises(ValueError):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="larger than the number of points"):
        GaussianMixture(7).fit(data)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(1).fit(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        GaussianMixture(1).fit(torch.empty(0, 2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        gmm.predict(torch.randn(3, 3))


# =============================================================================== KMeans
def _blobs(seed=0):
    datasets = pytest.importorskip("sklearn.datasets")
    data, _ = datasets.make_blobs(n_samples=1000, centers=5, n_features=4, cluster_std=1.0, random_state=seed)
    return data


@pytest.mark.parametrize("init,seeds", [("k-means++", range(5)), ("random", range(10))])
def test_kmeans_inertia_close_to_sklearn(init, seeds):
    cluster = pytest.importorskip("sklearn.cluster")
    data = _blobs()
    reference = cluster.KMeans(n_clusters=5, n_init=10, random_state=0).fit(data).inertia_
    x = torch.tensor(data, dtype=torch.float32)
    # Lloyd's algorithm finds a local minimum: compare the best of several seeded starts.
    best = math.inf
    for seed in seeds:
        kmeans = KMeans(n_clusters=5, max_iter=100, init=init, seed=seed)
        labels, centers = kmeans.fit(x)
        assert labels.shape == (1000,) and centers.shape == (5, 4)
        torch.testing.assert_close(kmeans.predict(x), labels)  # labels = nearest final centre
        best = min(best, kmeans.inertia_)
    assert best <= 1.02 * reference  # within 2 %


def test_kmeans_small_example_and_reproducibility():
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    labels, centers = KMeans(n_clusters=2, seed=0).fit(x)
    assert sorted(centers.tolist()) == [[0.0, 0.5], [10.0, 10.5]]
    assert labels[0] == labels[1] != labels[2] == labels[3]
    data = torch.tensor(_blobs(1), dtype=torch.float32)
    first = KMeans(4, seed=3).fit(data)
    second = KMeans(4, seed=3).fit(data)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_kmeans_errors():
    kmeans = KMeans(n_clusters=2)
    with pytest.raises(NotFittedError):
        kmeans.predict(torch.randn(3, 2))
    with pytest.raises(AttributeError):  # the reference's exception type still works
        kmeans.predict(torch.randn(3, 2))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_clusters"):
            KMeans(n_clusters=bad).fit(torch.randn(5, 2))
    with pytest.raises(ValueError, match="larger than the number of points"):
        KMeans(n_clusters=6).fit(torch.randn(5, 2))
    with pytest.raises(ValueError, match="empty"):
        kmeans.fit(torch.empty(0, 2))
    with pytest.raises(ValueError, match="NaN"):
        kmeans.fit(torch.tensor([[float("nan"), 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kmeans.fit(torch.randn(5))
    with pytest.raises(ValueError, match="init"):
        KMeans(2, init="farthest")
    kmeans.fit(torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        kmeans.predict(torch.randn(3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_density_components_follow_device(device):
    generator = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(100, 3, generator=generator), torch.randn(100, 3, generator=generator) + 5]).to(
        device
    )
    labels, centers = KMeans(2, init="k-means++", seed=0).fit(data)
    assert labels.device.type == device and centers.device.type == device
    gmm = GaussianMixture(2, seed=0)
    gmm.fit(data)
    assert gmm.means.device.type == device and gmm.score_samples(data).device.type == device
    kde = GaussianKDE(data)
    assert kde(data).device.type == device
    torch.testing.assert_close(
        kde.log_density(data).cpu(), GaussianKDE(data.cpu()).log_density(data.cpu()), atol=1e-3, rtol=1e-4
    )
