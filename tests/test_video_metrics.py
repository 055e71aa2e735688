"""Video metrics of `adlearn.metrics`: frame AUROC micro / macro / per kind against scikit-learn, and the
region AUROC against hand-counted matches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adlearn.metrics import (
    frame_auroc_macro,
    frame_auroc_micro,
    frame_auroc_per_kind,
    mask_boxes,
    region_auroc,
)


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    videos = np.repeat(["a", "b", "c"], [30, 40, 25])
    labels = (rng.random(len(videos)) < 0.3).astype(int)
    labels[videos == "c"] = 0  # a video without anomalies
    scores = rng.normal(size=len(videos)) + labels * 1.0 + (videos == "b") * 2.0  # video b drifts upwards
    kinds = np.where(labels == 1, rng.choice(["velocity", "pose"], size=len(videos)), "")
    return labels, scores, videos, kinds


def test_micro_is_the_pooled_auroc(frames):
    labels, scores, _, _ = frames
    assert frame_auroc_micro(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_macro_is_the_mean_of_each_video_and_names_the_videos_left_out(frames):
    labels, scores, videos, _ = frames
    expected = np.mean([roc_auc_score(labels[videos == v], scores[videos == v]) for v in ("a", "b")])
    with pytest.warns(UserWarning, match=r"leaves out 1 video.*: c"):
        assert frame_auroc_macro(labels, scores, videos) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="names for"):
        frame_auroc_macro(labels, scores, videos[:-1])
    with pytest.raises(ValueError, match="none has both"):
        frame_auroc_macro(np.zeros(4), np.arange(4.0), ["x", "x", "y", "y"])


def test_per_kind_compares_each_kind_with_all_normal_frames(frames):
    labels, scores, _, kinds = frames
    result = frame_auroc_per_kind(labels, scores, kinds)
    assert set(result) == {"pose", "velocity"}
    for kind, value in result.items():
        chosen = (labels == 0) | (kinds == kind)
        assert value == pytest.approx(roc_auc_score(labels[chosen], scores[chosen]), abs=1e-12)


def test_mask_boxes_are_the_components_bounding_boxes():
    mask = np.zeros((10, 12))
    mask[1:4, 2:5] = 1
    mask[6:9, 8:12] = 1
    mask[4, 5] = 1  # touches the first blob diagonally: one 8-connected component
    assert mask_boxes(mask).tolist() == [[2, 1, 6, 5], [8, 6, 12, 9]]


def test_region_auroc_counts_matches_false_alarms_and_misses_by_hand():
    mask = np.zeros((20, 20))
    mask[2:8, 2:8] = 1  # two ground-truth regions
    mask[12:18, 12:18] = 1
    boxes = [np.array([[2, 2, 8, 8], [0, 12, 5, 19.0]]), np.zeros((0, 4))]
    scores = [np.array([0.9, 0.5]), np.zeros(0)]
    masks = [mask, np.zeros((20, 20))]
    # samples: matched box 0.9 (positive), false alarm 0.5 (negative), missed region -inf (positive)
    # pairs (positive > negative): 0.9 > 0.5 yes, -inf > 0.5 no -> AUROC 1/2
    assert region_auroc(masks, boxes, scores) == pytest.approx(0.5)
    # the second region found with a high score: both positives above the false alarm
    boxes[0] = np.vstack([boxes[0], [[11, 11, 18, 18]]])
    scores[0] = np.append(scores[0], 0.7)
    assert region_auroc(masks, boxes, scores) == pytest.approx(1.0)
    # IoU 1/60 < 0.1: a box barely touching a region does not find it; both regions missed
    assert region_auroc([mask], [np.array([[7, 7, 12, 12.0]])], [np.array([1.0])]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="region AUROC needs both"):
        region_auroc([np.zeros((20, 20))], [np.array([[0, 0, 3, 3.0]])], [np.array([1.0])])
    with pytest.raises(ValueError, match="same frames"):
        region_auroc(masks, boxes[:1], scores)
