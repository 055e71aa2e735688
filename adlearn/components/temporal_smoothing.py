"""`smooth_over_time`: a Gaussian filter along each video's frame scores.

A video model scores each frame from a short clip, so one frame's score is noisy: an object half out of
the picture, two walkers whose silhouettes merge for a frame. Anomalies last many frames (a runner crosses
the scene in seconds), so video anomaly detection papers smooth each test video's frame scores over time
before they compute the frame AUROC. AI-VAD's authors do it in their evaluation script
(``evaluate.py`` of github.com/talreiss/Accurate-Interpretable-VAD: ``gaussian_filter1d`` with σ = 3
frames for UCSD Ped2 and Avenue, σ = 7 for ShanghaiTech); anomalib's ``anomalib.models.video.ai_vad``
does not smooth.

Each video is filtered on its own (a video's first frames never borrow from the previous video), in
frame order, with the sampled Gaussian of `adlearn.components.blur.gaussian_kernel1d`

    s̃_t = Σ_{u=−r..r} g(u) · s_{t+u},    g(u) ∝ exp(−u² / 2σ²),    r = int(4σ + 0.5),

and the video's ends padded by reflection with the edge repeated (``d c b a | a b c d | d c b a``:
``scipy.ndimage``'s default ``mode="reflect"``, numpy's ``"symmetric"``), so a constant score stays
constant. A video shorter than the kernel's radius is reflected as many times as it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adlearn.components.blur import gaussian_kernel1d


def gaussian_filter_1d(values: np.ndarray, sigma: float) -> np.ndarray:
    """One sequence ``(T,)`` filtered by the sampled Gaussian of standard deviation ``sigma`` (frames)."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) == 0:
        return values.copy()
    radius = int(4.0 * sigma + 0.5)
    kernel = gaussian_kernel1d(sigma, 2 * radius + 1).numpy()  # (2r + 1,), sums to 1
    padded = np.pad(values, radius, mode="symmetric")  # (T + 2r,): edge repeated, reflected as often as needed
    return np.convolve(padded, kernel, mode="valid")  # (T,); the kernel is symmetric: convolution = correlation


def smooth_over_time(
    scores: np.ndarray, videos: Sequence[str], frame_indices: Sequence[int], sigma: float
) -> np.ndarray:
    """Frame scores ``(F,)`` of several videos, each video filtered along its own frame order.

    ``videos[i]`` and ``frame_indices[i]`` say which frame ``scores[i]`` belongs to; the rows may come in
    any order (the result keeps it). ``sigma = 0`` returns the scores unchanged.
    """
    scores = np.asarray(scores, dtype=np.float64)
    frame_indices = np.asarray(frame_indices)
    if len(videos) != len(scores) or len(frame_indices) != len(scores):
        raise ValueError(
            f"scores, videos and frame_indices must have one entry per frame, got {len(scores)}, "
            f"{len(videos)} and {len(frame_indices)}"
        )
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 frames (0: no smoothing), got {sigma}")
    smoothed = scores.copy()
    if sigma == 0:
        return smoothed
    names = np.asarray(videos, dtype=object)
    for name in dict.fromkeys(names.tolist()):  # each video on its own, in the order they come
        rows = np.flatnonzero(names == name)
        rows = rows[np.argsort(frame_indices[rows], kind="stable")]  # (T,) in frame order
        smoothed[rows] = gaussian_filter_1d(scores[rows], sigma)
    return smoothed
