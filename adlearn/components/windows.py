"""Sliding windows over a patch grid, and the harmonic mean that brings window scores back to patches
(WinCLIP, Jeong et al., CVPR 2023, Sec. 4.2 "WinCLIP" and Eq. 3; reference: ``anomalib.models.image.winclip``,
its ``utils`` module: ``make_masks``, ``harmonic_aggregation``).

A vision transformer (or a CNN) describes an image as a grid of h × w patches, numbered row by row:
patch ``i`` sits at row ``i // w``, column ``i % w``. A **window** of k × k patches slides over the
grid with stride s; window ``j`` is the list of the k² patch numbers it covers:

    window_masks((3, 3), 2)  ->  [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]

A 15 × 15 grid (a 240-pixel image in 16-pixel patches) has (15 − 2 + 1)² = 196 windows of 2 × 2
patches and (15 − 3 + 1)² = 169 of 3 × 3.

Each window gets one score. A patch is covered by up to k² windows; its score is the **harmonic mean**
of theirs (Eq. 3):

    M(p) = n(p) / Σ_{j ∋ p} 1 / s_j          n(p) = the number of windows covering p

The harmonic mean leans towards the smallest of the scores: a patch looks anomalous only if every
window over it does, so an anomaly does not bleed into the normal patches a window also covers.

Everything here is generic (plain index arithmetic on any grid), tested against explicit loops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_grid(grid_size: tuple[int, int], window: int, stride: int) -> tuple[int, int]:
    height, width = (int(grid_size[0]), int(grid_size[1]))
    if window < 1 or stride < 1:
        raise ValueError(f"window={window} and stride={stride} must both be >= 1")
    if window > min(height, width):
        raise ValueError(
            f"a {window}×{window} window does not fit in a {height}×{width} patch grid: "
            f"use windows of at most {min(height, width)} patches (or a larger image)"
        )
    return height, width


def window_masks(grid_size: tuple[int, int], window: int, stride: int = 1) -> torch.Tensor:
    """The patch numbers (row-major) each k × k window covers: ``(n_windows, k²)`` int64.

    Windows are ordered row by row (top-left first), and inside a window so are its patches.
    n_windows = (⌊(h − k) / s⌋ + 1) · (⌊(w − k) / s⌋ + 1).
    """
    height, width = _check_grid(grid_size, window, stride)
    grid = torch.arange(height * width, dtype=torch.float64).reshape(1, 1, height, width)
    # unfold lists each window's k² values as a column: (1, k², n_windows); the values are patch numbers
    columns = F.unfold(grid, kernel_size=window, stride=stride)
    return columns[0].T.round().long().contiguous()  # (n_windows, k²)


def window_counts(masks: torch.Tensor, n_patches: int) -> torch.Tensor:
    """How many windows cover each patch: ``(n_patches,)`` int64 (n(p) in Eq. 3)."""
    return torch.bincount(masks.reshape(-1), minlength=n_patches)


def harmonic_aggregation(window_scores: torch.Tensor, masks: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Each patch's harmonic mean of the scores of the windows covering it (Eq. 3).

    window_scores (B, n_windows) ≥ 0, masks (n_windows, k²) -> (B, h, w). A window score of 0 makes
    the patches under it 0 (1/0 = ∞); a patch no window covers (a stride > 1) scores 0.
    """
    height, width = int(grid_size[0]), int(grid_size[1])
    if window_scores.ndim != 2 or window_scores.shape[1] != masks.shape[0]:
        raise ValueError(
            f"window_scores must be (B, {masks.shape[0]}) — one score per window of the masks; "
            f"got {tuple(window_scores.shape)}"
        )
    batch, per_window = window_scores.shape[0], masks.shape[1]
    reciprocal = window_scores.reciprocal()  # (B, n_windows), ∞ where a score is 0
    # every (window, patch) pair adds the window's 1/s to the patch it covers
    spread = reciprocal.repeat_interleave(per_window, dim=1)  # (B, n_windows·k²), window-major like masks
    sums = window_scores.new_zeros(batch, height * width).index_add_(1, masks.reshape(-1), spread)  # Σ 1/s
    counts = window_counts(masks, height * width).to(window_scores.dtype)  # (h·w,)
    means = counts / sums  # n / Σ 1/s; ∞ sums give 0, uncovered patches 0/0 = nan
    return means.nan_to_num(nan=0.0).reshape(batch, height, width)


def harmonic_mean(maps: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise harmonic mean of same-shaped tensors: n / Σ 1/mᵢ (0 where any of them is 0)."""
    if not maps:
        raise ValueError("harmonic_mean needs at least one tensor")
    stacked = torch.stack(maps)  # (n, ...)
    return (len(maps) / stacked.reciprocal().sum(dim=0)).nan_to_num(nan=0.0)


def window_tokens(tokens: torch.Tensor, masks: torch.Tensor, class_token: bool = True) -> torch.Tensor:
    """Each window's tokens, one short sequence per (image, window): the input of a window embedding.

    tokens (B, 1 + P, D) with the class token first (``class_token=True``) or (B, P, D);
    masks (n_windows, k²) -> (B · n_windows, 1 + k², D): image-major (all windows of image 0 first),
    the class token leading each sequence when there is one.
    """
    batch, _, dim = tokens.shape
    offset = 1 if class_token else 0
    index = masks + offset  # patch numbers -> token positions
    if class_token:
        index = torch.cat([index.new_zeros(index.shape[0], 1), index], dim=1)  # (n_windows, 1 + k²)
    picked = tokens[:, index]  # (B, n_windows, len, D)
    return picked.reshape(batch * masks.shape[0], index.shape[1], dim)


def pool_windows(patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean of each window's patch features: (B, P, C) -> (B, n_windows, C).

    On a feature map this is a k × k average pool with the windows' stride (tested against
    ``F.avg_pool2d``): the window embedding of an encoder that has no class token to attend with.
    """
    return patches[:, masks].mean(dim=2)  # (B, n_windows, k², C) -> (B, n_windows, C)


__all__ = [
    "harmonic_aggregation",
    "harmonic_mean",
    "pool_windows",
    "window_counts",
    "window_masks",
    "window_tokens",
]
