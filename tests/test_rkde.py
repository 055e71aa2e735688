"""R-KDE: RoI features by hand, the box-painted map against a brute-force loop, image score = the
largest box score, images without regions, predict rebuilt from the parts, the reference's network
architecture, the offline errors, and learning on the synthetic data."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

from adlearn.components.roi_features import AlexNetRoiTrunk, RoiFeatureExtractor, rois_from_boxes
from adlearn.models import create
from adlearn.models.rkde import rkde_anomaly_map, rkde_image_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

TINY = dict(
    backbone="efficientnet_lite0",
    image_size=64,
    selective_search_scales=(100.0,),
    min_box_size=8,
    n_pca_components=4,
    device="cpu",
    seed=0,
)


def make(**options):
    return create("rkde", **{**TINY, **options})


@pytest.fixture(scope="module")
def data(synthetic_split):
    transform = make().transform
    return synthetic_split(transform, "train")[1], synthetic_split(transform, "test")


@pytest.fixture(scope="module")
def fitted(data):
    return make().fit(data[0])


def test_defaults_are_the_reference_post_processing_and_classifier():
    from adlearn.models import get_model_class

    defaults = {name: p.default for name, p in inspect.signature(get_model_class("rkde")).parameters.items()}
    expected = dict(
        roi_score_threshold=0.001,
        min_box_size=25,
        iou_threshold=0.3,
        max_detections_per_image=100,
        n_pca_components=16,
        feature_scaling_method="scale",
        max_training_points=40000,
        proposals="selective_search",
    )
    assert {key: defaults[key] for key in expected} == expected
    assert get_model_class("rkde").preset("paper") == {"proposals": "rcnn", "roi_features": "alexnet"}


def test_roi_align_of_grid_aligned_boxes_is_the_mean_of_the_cells():
    # A box covering feature cells [a, a+2s) × [b, b+2s) with an s×s output: with aligned=True and two samples
    # per bin side, every sample falls on a cell centre, so each output cell is the mean of a 2×2 block.
    extractor = RoiFeatureExtractor("efficientnet_lite0", "layer3", output_size=2, pretrained="none")
    assert extractor.stride == 16
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    feature_map = extractor.feature_map(images)  # (2, 112, 8, 8)
    a, b = 1, 2  # columns 1..4, rows 2..5
    rois = torch.tensor([[1.0, 16 * a, 16 * b, 16 * (a + 4), 16 * (b + 4)]])  # image 1
    pooled = extractor(images, rois).reshape(1, -1, 2, 2)  # (1, C, 2, 2)
    block = feature_map[1, :, b : b + 4, a : a + 4]  # (C, 4, 4)
    expected = block.reshape(-1, 2, 2, 2, 2).mean(dim=(2, 4))  # (C, 2, 2): means of the 2×2 blocks
    torch.testing.assert_close(pooled[0], expected, atol=1e-5, rtol=1e-5)
    assert extractor.out_dim == 112 * 4


def test_rois_from_boxes_prefixes_the_image_index():
    rois = rois_from_boxes([torch.tensor([[0.0, 0, 4, 4]]), torch.zeros(0, 4), torch.tensor([[1.0, 1, 2, 2]] * 2)])
    torch.testing.assert_close(rois[:, 0], torch.tensor([0.0, 2, 2]))
    with pytest.raises(ValueError, match="outside the batch"):
        RoiFeatureExtractor("efficientnet_lite0", pretrained="none").pool(torch.zeros(1, 4, 2, 2), rois)


def test_box_painted_map_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    height, width = 24, 32
    boxes, scores = [], []
    for n in (7, 0, 3):
        corner = torch.rand(n, 2, generator=generator) * torch.tensor([width, height])
        size = torch.rand(n, 2, generator=generator) * 15 + 1
        boxes.append(torch.cat([corner, corner + size], dim=1))
        scores.append(torch.rand(n, generator=generator))
    maps = rkde_anomaly_map(boxes, scores, (height, width))
    expected = torch.zeros(3, height, width)
    for i, (image_boxes, image_scores) in enumerate(zip(boxes, scores)):
        for (x1, y1, x2, y2), score in zip(image_boxes.tolist(), image_scores.tolist()):
            for row in range(height):
                for column in range(width):
                    if math.floor(x1) <= column < math.ceil(x2) and math.floor(y1) <= row < math.ceil(y2):
                        expected[i, row, column] = max(expected[i, row, column], score)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(
        rkde_image_score(scores), torch.stack([s.max() if len(s) else torch.tensor(0.0) for s in scores])
    )


def test_prediction_carries_boxes_and_the_image_score_is_the_largest_box_score(fitted, data):
    images = data[1][1][:4]
    prediction = fitted.predict(images)
    assert len(prediction.boxes) == len(prediction.box_scores) == 4
    for boxes, scores, image_score, anomaly_map in zip(
        prediction.boxes, prediction.box_scores, prediction.pred_score, prediction.anomaly_map
    ):
        assert boxes.shape == (len(scores), 4) and len(scores) > 0
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 8).all() and len(scores) <= 100
        assert image_score == scores.max() == anomaly_map.max()
        assert ((scores > 0) & (scores < 1)).all()


def test_predict_rebuilt_from_the_parts(fitted, data):
    images = data[1][1][:3]
    boxes = fitted.propose_regions(images)  # step 1
    features, same_boxes = fitted.extract_features(images, boxes)  # step 2
    scores = fitted.classifier.predict(features).split([len(b) for b in boxes])  # steps 3-4
    prediction = fitted.predict(images)
    assert all(torch.equal(a, b) for a, b in zip(same_boxes, prediction.boxes))
    for mine, theirs in zip(scores, prediction.box_scores):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(rkde_image_score(list(scores)), prediction.pred_score)
    torch.testing.assert_close(rkde_anomaly_map(boxes, list(scores), (64, 64)), prediction.anomaly_map)


def test_an_image_without_regions_scores_zero_with_a_warning(data):
    model = make().fit(data[0])
    model.min_box_size = 1000.0  # no box survives post-processing now
    with pytest.warns(RuntimeWarning, match="no region proposal survived.*score is 0"):
        prediction = model.predict(data[1][1][:2])
    assert prediction.pred_score.tolist() == [0.0, 0.0] and not prediction.anomaly_map.any()
    assert [len(b) for b in prediction.boxes] == [0, 0]


def test_too_few_training_regions_is_a_clear_error(data):
    with pytest.raises(ValueError, match="training regions.*n_pca_components"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make(min_box_size=60, n_pca_components=16).fit(data[0][:2])


def test_reference_trunk_is_alexnet_without_its_last_pool():
    from torchvision.models import alexnet

    trunk = AlexNetRoiTrunk()
    reference = alexnet(weights=None)
    ours = [tuple(p.shape) for p in trunk.features.parameters()]
    assert ours == [tuple(p.shape) for p in reference.features.parameters()]
    assert [tuple(p.shape) for p in trunk.classifier.parameters()] == [(4096, 9216), (4096,), (4096, 4096), (4096,)]
    assert trunk.resize_factor(256, 256) == 600 / 256 and trunk.resize_factor(100, 500) == 2.0
    features = trunk(torch.zeros(1, 3, 64, 64), torch.tensor([[0.0, 0, 0, 32, 32], [0, 8, 8, 64, 64]]))
    assert features.shape == (2, 4096)


def test_the_reference_paths_fail_offline_with_the_way_out(monkeypatch, data):
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match='proposals="selective_search"'):
        make(proposals="rcnn").fit(data[0][:2])
    with pytest.raises(ValueError, match='roi_weights=.*roi_features="backbone"'):
        make(roi_features="alexnet")
    with pytest.raises(ValueError, match="proposals must be one of"):
        make(proposals="edge_boxes")


def scene(seed: int, foreign: bool, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey, slightly noisy table with three blue boxes; ``foreign`` adds a red disc (the anomaly).
    Returns the ImageNet-normalised image (3, H, W) and the disc's mask (H, W)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 0.55) + rng.normal(0, 0.03, (size, size, 3))
    columns, rows = np.meshgrid(np.arange(size), np.arange(size))
    mask = np.zeros((size, size))
    for _ in range(3):
        w, h = rng.integers(14, 30, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        image[(columns >= x) & (columns < x + w) & (rows >= y) & (rows < y + h)] = [0.2, 0.3, 0.7] + rng.normal(
            0, 0.05, 3
        )
    if foreign:
        radius = rng.integers(8, 14)
        cx, cy = rng.integers(radius, size - radius, 2)
        mask = ((columns - cx) ** 2 + (rows - cy) ** 2 <= radius**2).astype(float)
        image[mask > 0] = [0.9, 0.2, 0.1]
    pixels = torch.tensor(np.clip(image, 0, 1), dtype=torch.float32).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (pixels - mean[:, None, None]) / std[:, None, None], torch.tensor(mask, dtype=torch.float32)


def test_learns_that_a_foreign_object_is_anomalous():
    # Normal scenes: blue boxes on grey. Anomalous ones add a red disc: its boxes fall where no training box
    # lies, so they score high, the image score (the largest box score) rises and the map lights the disc.
    # Measured: image AUROC 0.83, pixel AUROC 0.97.
    from adlearn.metrics import image_auroc, pixel_auroc

    train = torch.stack([scene(seed, foreign=False)[0] for seed in range(100, 140)])
    test, masks = zip(*[scene(seed, foreign=seed >= 300) for seed in [*range(200, 210), *range(300, 310)]])
    model = make(image_size=128, min_box_size=12, n_pca_components=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prediction = model.fit(train).predict(torch.stack(test))
    labels = [0] * 10 + [1] * 10
    image, pixel = image_auroc(labels, prediction.pred_score), pixel_auroc(torch.stack(masks), prediction.anomaly_map)
    print(f"R-KDE on generated scenes with a foreign object: image AUROC {image:.3f}, pixel AUROC {pixel:.3f}")
    assert image >= 0.75 and pixel >= 0.9


def test_draw_boxes_outlines_every_box_and_labels_the_best(fitted, data):
    from matplotlib.patches import Rectangle

    from adlearn.plotting import draw_boxes

    images = data[1][1][:2]
    prediction = fitted.predict(images)
    fig = draw_boxes(images, prediction.boxes, prediction.box_scores, titles=["a", "b"])
    for ax, boxes in zip(fig.axes, prediction.boxes):
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == len(boxes) and len(ax.texts) == 1
    fig = draw_boxes(images, prediction.boxes, top=3)  # proposals without scores: the first three
    assert [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in fig.axes] == [3, 3]
    with pytest.raises(ValueError, match="one box list"):
        draw_boxes(images, prediction.boxes[:1])
