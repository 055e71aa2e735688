"""Smoothing frame scores over time (`adlearn.components.temporal_smoothing`) against SciPy's
``gaussian_filter1d``, per video, and AI-VAD's use of it in `adlearn.evaluate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d
from video_fixtures import TINY_VIDEO  # tests/video_fixtures.py

from adlearn.components.temporal_smoothing import gaussian_filter_1d, smooth_over_time


@pytest.mark.parametrize("length", [1, 2, 5, 13, 40])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 7.0])
def test_the_filter_is_scipys_default_reflect_filter_even_for_videos_shorter_than_the_kernel(length, sigma):
    values = np.random.default_rng(length).normal(size=length)
    expected = gaussian_filter1d(values, sigma, mode="reflect", truncate=4.0)
    assert gaussian_filter_1d(values, sigma) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_a_constant_stays_constant_and_sigma_zero_changes_nothing():
    assert gaussian_filter_1d(np.full(9, 2.5), 3.0) == pytest.approx(np.full(9, 2.5))
    values = np.arange(6.0)
    assert np.array_equal(gaussian_filter_1d(values, 0.0), values)
    assert np.array_equal(smooth_over_time(values, ["a"] * 6, range(6), 0.0), values)


def test_each_video_is_smoothed_alone_in_frame_order_whatever_the_row_order():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=7)
    b[0] = 50.0  # a spike at the start of video b must not leak into the end of video a
    rows = [("a", t, a[t]) for t in range(12)] + [("b", t, b[t]) for t in range(7)]
    order = rng.permutation(len(rows))
    videos = [rows[i][0] for i in order]
    frames = [rows[i][1] for i in order]
    scores = np.array([rows[i][2] for i in order])
    smoothed = smooth_over_time(scores, videos, frames, 2.0)
    expected = {"a": gaussian_filter1d(a, 2.0), "b": gaussian_filter1d(b, 2.0)}
    for value, video, frame in zip(smoothed, videos, frames):
        assert value == pytest.approx(expected[video][frame], rel=1e-6, abs=1e-7)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="one entry per frame"):
        smooth_over_time(np.zeros(3), ["a", "a"], [0, 1, 2], 1.0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        smooth_over_time(np.zeros(3), ["a"] * 3, [0, 1, 2], -1.0)


def test_ai_vad_evaluation_smooths_whole_videos_and_keeps_the_clip_scores():
    from adlearn.data import ClipDataset, synthetic_surveillance
    from adlearn.evaluate import evaluate
    from adlearn.models import create

    size = (64, 80)
    train = ClipDataset(synthetic_surveillance("train", n_videos=3, n_frames=10, size=size))
    test = ClipDataset(synthetic_surveillance("test", n_videos=2, n_frames=14, size=size))
    model = create("ai_vad", device="cpu", **{**TINY_VIDEO, "temporal_sigma": 2.0}).fit(train)
    predictions = evaluate(model, test, return_predictions=True)["predictions"]
    videos, frames = predictions["videos"], predictions["frame_indices"]
    expected = smooth_over_time(predictions["clip_scores"], videos, frames, 2.0)
    assert np.allclose(predictions["pred_scores"], expected)
    first = np.array([v == videos[0] for v in videos])
    raw = predictions["clip_scores"][first][np.argsort(frames[first])]
    assert np.allclose(predictions["pred_scores"][first][np.argsort(frames[first])], gaussian_filter1d(raw, 2.0))
    assert torch.equal(model.smooth_frame_scores(raw, [videos[0]] * len(raw), range(len(raw))).float(),
                       torch.from_numpy(gaussian_filter_1d(raw, 2.0)).float())  # fmt: skip
    with pytest.raises(ValueError, match="temporal_sigma must be >= 0"):
        create("ai_vad", device="cpu", **{**TINY_VIDEO, "temporal_sigma": -1})
    assert create("ai_vad", preset="cpu", device="cpu").temporal_sigma == 3.0
    assert create("ai_vad", preset="paper", device="cpu").temporal_sigma == 3.0
    assert create("ai_vad", device="cpu").temporal_sigma == 0.0  # anomalib's: no smoothing
