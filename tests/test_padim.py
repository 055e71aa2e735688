"""PaDiM: each step against an independent computation, then detection on synthetic and real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis

from adlearn.models import create

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def model_and_data(synthetic_split):
    model = create("padim", backbone=BACKBONE, image_size=64, device="cpu", seed=0, n_features=10)
    train, images = synthetic_split(model.transform, "train")
    test, _ = synthetic_split(model.transform, "test")
    model.fit(train)
    return model, images, test


def test_embedding_is_concatenated_upsampled_layers_with_random_channels(model_and_data):
    model, images, _ = model_and_data
    features = model.feature_extractor(images[:2])
    layer1, layer2, layer3 = features["layer1"], features["layer2"], features["layer3"]
    size = layer1.shape[-2:]
    full = torch.cat([layer1, F.interpolate(layer2, size=size), F.interpolate(layer3, size=size)], dim=1)
    assert full.shape[1] == 24 + 40 + 112
    torch.testing.assert_close(model.extract_features(images[:2]), full[:, model.channel_index])


def test_map_is_blurred_upsampled_mahalanobis_distance(model_and_data):
    model, images, test = model_and_data
    train_embeddings = model.extract_features(images).double().numpy()  # (N, C, h, w)
    query = test[len(test) - 1]["image"][None]
    query_embedding = model.extract_features(query).double().numpy()[0]  # (C, h, w)
    n, c, h, w = train_embeddings.shape
    distances = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            samples = train_embeddings[:, :, i, j]
            covariance = np.cov(samples, rowvar=False) + 0.01 * np.eye(c)
            distances[i, j] = mahalanobis(query_embedding[:, i, j], samples.mean(0), np.linalg.inv(covariance))
    upsampled = F.interpolate(
        torch.from_numpy(distances)[None, None], size=(64, 64), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    # PaDiM's blur: sigma 4, kernel radius int(4*sigma+0.5), reflect border == scipy's "mirror".
    expected = gaussian_filter(upsampled, sigma=4, mode="mirror", truncate=4.0)
    prediction = model.predict(query)
    np.testing.assert_allclose(prediction.anomaly_map[0].numpy(), expected, rtol=2e-3, atol=2e-3)
    assert prediction.pred_score[0] == prediction.anomaly_map[0].max()


def test_detects_synthetic_defects(small_synthetic_root):
    # 64-px images upsampled to 128 px so the finest feature map (stride 4) is 32x32.
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import evaluate

    model = create("padim", backbone=BACKBONE, image_size=128, device="cpu", seed=0, n_features=40)
    train = MVTecDataset(small_synthetic_root, "weave", "train", transform=model.transform)
    test = MVTecDataset(small_synthetic_root, "weave", "test", transform=model.transform)
    results = evaluate(model.fit(train), test)
    assert results["image_auroc"] > 0.9
    assert results["pixel_auroc"] > 0.85


def test_rejects_bad_n_features():
    with pytest.raises(ValueError, match="1..176"):
        create("padim", backbone=BACKBONE, n_features=500, device="cpu")
    with pytest.raises(ValueError, match="n_features=0 must be in 1..176"):  # 0 is an error, not "the default"
        create("padim", backbone=BACKBONE, n_features=0, device="cpu")
    with pytest.raises(ValueError, match="no default n_features"):
        create("padim", backbone="mobilenetv3_small_100", pretrained="none", device="cpu")


@pytest.mark.slow
def test_real_bottle_matches_anomalib(bottle_fit):
    # anomalib 2.7 on the same data and weights (measured here): image AUROC 0.998, pixel AUROC 0.970.
    results = bottle_fit("padim", n_train=None, preset=None, backbone=BACKBONE)
    assert results["image_auroc"] >= 0.99
    assert results["pixel_auroc"] >= 0.965
