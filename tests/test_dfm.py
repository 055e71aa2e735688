"""DFM: pooled features, FRE against sklearn's PCA, NLL against numpy, a real one-class problem, errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA as SklearnPCA

from adlearn.data import digit_images, one_class_split
from adlearn.models import create, load

BACKBONE = "efficientnet_lite0"
SIZE = 64


def make(**options):
    # Pooling 2 (not 4) keeps a 2x2 grid of positions at 64 px (lite0 layer3 = blocks.4, stride 16).
    defaults = dict(backbone=BACKBONE, image_size=SIZE, device="cpu", seed=0, pooling_kernel_size=2)
    return create("dfm", **{**defaults, **options})


@pytest.fixture(scope="module")
def data(synthetic_split):
    transform = make().transform
    return synthetic_split(transform, "train")[1], synthetic_split(transform, "test")[1]  # images, queries


@pytest.fixture(scope="module")
def fre_model(data):
    return make().fit(data[0])


@pytest.fixture(scope="module")
def nll_model(data):
    return make(score_type="nll").fit(data[0])


def test_defaults_follow_anomalib_v1():
    from adlearn.models import get_model_class

    defaults = {name: p.default for name, p in inspect.signature(get_model_class("dfm")).parameters.items()}
    assert (defaults["backbone"], defaults["layer"], defaults["pooling_kernel_size"]) == ("resnet50", "layer3", 4)
    assert defaults["pca_level"] == 0.97 and defaults["score_type"] == "fre"


def test_features_are_pooled_and_flattened_layer3(fre_model, data):
    images = data[0][:2]
    layer3 = fre_model.feature_extractor(images)["layer3"]  # lite0 blocks.4: (2, 112, 4, 4)
    expected = F.avg_pool2d(layer3, kernel_size=2, stride=2).flatten(1)
    assert expected.shape == (2, 112 * 2 * 2)
    torch.testing.assert_close(fre_model.collect(images), expected)


def sklearn_pca(model, images):
    """sklearn's PCA on the same training vectors, keeping 97 % of the variance."""
    train = model.collect(images).double().numpy()
    pca = SklearnPCA(n_components=0.97, svd_solver="full").fit(train)
    return pca


def test_pca_keeps_the_fewest_components_reaching_97_percent(fre_model, data):
    assert int(fre_model.pca.num_components) == sklearn_pca(fre_model, data[0]).n_components_


def test_fre_score_and_map_equal_sklearn_reconstruction_error(fre_model, data):
    images, queries = data
    pca = sklearn_pca(fre_model, images)
    features = fre_model.collect(queries).double().numpy()  # (M, C·h·w)
    error = (features - pca.inverse_transform(pca.transform(features))) ** 2
    prediction = fre_model.predict(queries)
    np.testing.assert_allclose(prediction.pred_score.numpy(), error.sum(1), rtol=2e-3, atol=1e-3)
    # The map: per-position error summed over channels, bilinearly upsampled to the image.
    per_position = torch.from_numpy(error).reshape(len(queries), 112, 2, 2).sum(1, keepdim=True)
    expected = F.interpolate(per_position, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(prediction.anomaly_map.numpy(), expected.numpy(), rtol=2e-3, atol=1e-3)


def test_nll_equals_mahalanobis_plus_log_determinant(nll_model, data):
    images, queries = data
    pca = sklearn_pca(nll_model, images)
    train = pca.transform(nll_model.collect(images).double().numpy())  # (N, k)
    query = pca.transform(nll_model.collect(queries).double().numpy())  # (M, k)
    mean = train.mean(0)
    covariance = np.cov(train, rowvar=False, bias=True)  # maximum-likelihood estimate
    centred = query - mean
    mahalanobis_sq = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)
    expected = mahalanobis_sq + np.linalg.slogdet(covariance)[1]  # 2·NLL up to a constant
    prediction = nll_model.predict(queries)
    assert prediction.anomaly_map is None and nll_model.task == "classification"
    scores = prediction.pred_score.double().numpy()
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(expected))
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("score_type", ["fre", "nll"])
def test_digits_one_class_auroc(score_type):
    from adlearn.metrics import image_auroc

    images, labels = digit_images(size=32)
    model, aurocs = make(image_size=32, pooling_kernel_size=1, score_type=score_type), {}
    for digit in (0, 4, 6):
        train, test, is_anomalous = one_class_split(labels, digit)
        model.fit(images[train])  # ~90 images; refitting starts over
        aurocs[digit] = image_auroc(is_anomalous, model.predict(images[test]).pred_score.numpy())
    assert min(aurocs.values()) > 0.85, aurocs


def test_detects_synthetic_defects(fre_model, small_synthetic_root):
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset
    from adlearn.evaluate import evaluate

    test = MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], "test", transform=fre_model.transform)
    results = evaluate(fre_model, test)
    assert results["image_auroc"] > 0.7


def test_the_image_level_nll_variant_round_trips_as_image_level(nll_model, data, tmp_path):
    # The default ("fre") variant's round trip: tests/test_model_contract.py.
    restored = load(nll_model.save(tmp_path / "dfm.pt"))
    after = restored.predict(data[1])
    assert restored.task == nll_model.task == "classification" and after.anomaly_map is None
    assert torch.equal(nll_model.predict(data[1]).pred_score, after.pred_score)


def test_clear_errors():
    with pytest.raises(ValueError, match="'fre'.*'nll'"):
        make(score_type="mahalanobis")
    with pytest.raises(ValueError, match="pooling_kernel_size"):
        make(pooling_kernel_size=0)
    with pytest.raises(ValueError, match=r"4x4 map, smaller than pooling_kernel_size=8"):
        make(pooling_kernel_size=8)
    with pytest.raises(ValueError, match="at least 2 training images"):
        make().fit(torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_matches_anomalib(bottle_fit):
    # anomalib 2.7 on the same data and weights (benchmarks/bench_memory_models.py): image AUROC 0.9984,
    # pixel AUROC 0.9319 (the map is as coarse as the 4x4 pooled grid).
    results = bottle_fit("dfm", n_train=None, preset=None, backbone=BACKBONE)
    assert results["image_auroc"] >= 0.99
    assert results["pixel_auroc"] == pytest.approx(0.9319, abs=0.01)


def test_a_map_not_divisible_by_the_pooling_keeps_its_last_row_and_column():
    # 80 px: lite0's stride-16 map is 5x5; pooling 2 gives a 3x3 grid whose last cells average one
    # row/column (ceil mode) instead of dropping them — a change in the bottom-right corner shows.
    model = make(image_size=80)
    features = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)
    pooled = F.avg_pool2d(features, 2, ceil_mode=True)
    assert pooled.shape[-2:] == (3, 3) and pooled[0, 0, 2, 2] == features[0, 0, 4, 4]
    images = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        base = model.extract_features(images)
        assert base.shape[-2:] == (3, 3)
        changed = images.clone()
        changed[..., 72:, 72:] += 5.0  # only the last 8x8 pixels: the map's last cell
        assert not torch.equal(model.extract_features(changed)[..., 2, 2], base[..., 2, 2])
