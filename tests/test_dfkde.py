"""DFKDE: pooled features, probabilities against scipy's KDE, a real one-class problem, errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA as SklearnPCA

from adlearn.data import digit_images, one_class_split
from adlearn.models import create

BACKBONE = "efficientnet_lite0"
N_COMPONENTS = 4  # the small synthetic set has 12 training images: fewer than the default 16


def make(**options):
    defaults = dict(backbone=BACKBONE, image_size=64, device="cpu", seed=0, n_pca_components=N_COMPONENTS)
    return create("dfkde", **{**defaults, **options})


@pytest.fixture(scope="module")
def data(synthetic_split):
    transform = make().transform
    return synthetic_split(transform, "train")[1], synthetic_split(transform, "test")[1]  # images, queries


@pytest.fixture(scope="module")
def fitted(data):
    return make().fit(data[0])


def test_defaults_follow_anomalib_v1():
    from adlearn.models import get_model_class

    defaults = {name: p.default for name, p in inspect.signature(get_model_class("dfkde")).parameters.items()}
    assert (defaults["backbone"], defaults["layers"], defaults["n_pca_components"]) == ("resnet18", ("layer4",), 16)
    assert defaults["feature_scaling_method"] == "scale" and defaults["max_training_points"] == 40000


def test_features_are_globally_averaged_layer4(fitted, data):
    images = data[0][:3]
    layer4 = fitted.feature_extractor(images)["layer4"]  # lite0 blocks.6: (3, 320, 2, 2)
    expected = layer4.mean(dim=(2, 3))
    assert expected.shape == (3, 320)
    torch.testing.assert_close(fitted.extract_features(images), expected)


def test_older_docs_resnet50_gives_the_2048_d_pooled_vector():
    model = create("dfkde", backbone="resnet50", pretrained="none", image_size=64, device="cpu")
    assert model.extract_features(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_probabilities_match_scipy_kde_through_the_same_pca(fitted, data):
    images, queries = data
    train = fitted.extract_features(images).double().numpy()  # (N, D)
    query = fitted.extract_features(queries).double().numpy()  # (M, D)
    # An independent PCA (sklearn) and KDE (scipy, Scott's bandwidth); the KDE does not care about
    # the signs of the principal axes, so both fits describe the same density.
    pca = SklearnPCA(n_components=N_COMPONENTS).fit(train)
    projected_train, projected_query = pca.transform(train), pca.transform(query)
    max_length = np.linalg.norm(projected_train, axis=1).max()  # "scale": training max norm
    kde = gaussian_kde((projected_train / max_length).T)
    log_density = kde.logpdf((projected_query / max_length).T)
    expected = 1 / (1 + np.exp(0.05 * (log_density - 12)))
    prediction = fitted.predict(queries)
    np.testing.assert_allclose(prediction.pred_score.double().numpy(), expected, rtol=1e-3, atol=1e-4)
    assert prediction.anomaly_map is None and fitted.task == "classification"


def test_digits_one_class_auroc():
    from adlearn.metrics import image_auroc

    images, labels = digit_images(size=32)
    model, aurocs = make(image_size=32, n_pca_components=16), {}
    for digit in (0, 4, 6):
        train, test, is_anomalous = one_class_split(labels, digit)
        model.fit(images[train])  # ~90 images; refitting starts over
        aurocs[digit] = image_auroc(is_anomalous, model.predict(images[test]).pred_score.numpy())
    # Measured here (seed 0, lite0 at 32 px): 0.98, 0.98, 0.98 — digits are easy to tell apart.
    assert min(aurocs.values()) > 0.85, aurocs


def test_too_few_training_images_names_both_numbers_and_the_fix(data):
    model = make(n_pca_components=16)
    with pytest.raises(ValueError, match=r"12 training images .* n_pca_components=16.*at least 17"):
        model.fit(data[0])


def test_rejects_unknown_scaling():
    with pytest.raises(ValueError, match="scale"):
        make(feature_scaling_method="minmax")


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_matches_anomalib(mvtec_bottle_root):
    # anomalib 2.7 on the same data and weights (benchmarks/bench_memory_models.py): image AUROC 0.9571.
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import fit_and_evaluate

    model = create("dfkde", backbone=BACKBONE, device="cpu", seed=0)
    train = MVTecDataset(mvtec_bottle_root, "bottle", "train", transform=model.transform)
    test = MVTecDataset(mvtec_bottle_root, "bottle", "test", transform=model.transform)
    assert fit_and_evaluate(model, train, test)["image_auroc"] == pytest.approx(0.9571, abs=0.01)
