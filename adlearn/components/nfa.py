"""A-contrario detection: the Number of False Alarms (NFA) of a latent Gaussian field.

U-Flow (Tailanian et al., 2023, arXiv:2211.12353, Sec. 3.4; anomalib
``anomalib.models.image.uflow.anomaly_map.AnomalyMapGenerator.compute_anomaly_mask``) segments without
choosing a threshold by hand. A trained flow sends normal features to z ~ N(0, I), every element
independent. Under that *null hypothesis* H0 everything about z is known, so one can ask, for every
region of the latent map, "how surprising is what I see here if nothing is wrong?":

1. **Candidates.** An element is a candidate when z² ≥ τ, the χ²(1) quantile of level ``probability_thr``
   (0.5 by default): under H0 it is a candidate with probability p = 1 − probability_thr.
2. **Regions.** A region is the w×w window around a latent position (w = ``window_size / 2^scale``,
   made odd: ``2·⌊w/2⌋ + 1``, at least 3); k = the number of candidates in it, over n elements. The
   window is cut at the border (n counts only the elements inside), so no element is counted twice.
3. **Probability under H0.** k is binomial, K ~ Bin(n, p), and P_H0(K ≥ k) = Σ_{j≥k} C(n,j) pʲ(1−p)ⁿ⁻ʲ.
   ``channels="sum"``: k and n count every channel (exact if the channels are independent);
   ``channels="mean"`` (default, as the reference): k is the candidate count averaged over channels
   (rounded down) and n the window area — a conservative test that stays valid when the latent
   channels are correlated, as they are on real data.
4. **NFA.** With N_tests regions tested in all (every position of every scale),
   NFA = N_tests · P_H0(K ≥ k). A region is *meaningful* (an anomaly) when NFA < ε. Then, under H0,
   the expected number of detections in an image is at most ε: the threshold is set by ε (``epsilon=1``:
   "on average at most one false region per image"), not learned from labels.

Deliberate differences from the reference:

* Several scales are combined by a union bound: N_tests counts the regions of *every* scale and a
  pixel's log-NFA is the smallest over the scales, so the ε guarantee holds for the whole pyramid.
  The reference adds the scales' log-probabilities (a product of p-values, which is not a p-value)
  and so does not control the false alarms it reports.
* The reference pads the squared latent by reflection before counting (border elements counted
  twice, no longer binomial) and uses ``binom.logsf(k, ...)`` = log P(K > k); here the window is cut
  at the border and the tail is P(K ≥ k).
* The reference computes the mask but its model never uses it; U-Flow here returns it at test time.

All log-probabilities are base 10, as in the paper (log-NFA < log10 ε ⇔ NFA < ε).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "binomial_log10_tail",
    "candidate_counts",
    "log10_probability_of_window",
    "log_nfa",
    "nfa_segmentation",
    "window_for_scale",
]

CHANNEL_MODES = ("mean", "sum")


def binomial_log10_tail(k, n, p: float) -> np.ndarray:
    """log10 P(K ≥ k) for K ~ Bin(n, p), elementwise (k, n arrays of integers; k ≤ 0 gives 0)."""
    from scipy.stats import binom

    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if not 0.0 < p < 1.0:
        raise ValueError(f"the candidate probability p must be in (0, 1), got {p}")
    return binom.logsf(k - 1, n, p) / math.log(10.0)  # sf(k − 1) = P(K > k − 1) = P(K ≥ k)


def window_for_scale(window_size: int, scale: int) -> int:
    """Odd window side at pyramid level ``scale`` (0 = finest): 2·⌊(window_size / 2^scale) / 2⌋ + 1, at least 3."""
    half = max(int((window_size / 2**scale) // 2), 1)
    return 2 * half + 1


def candidate_counts(z: torch.Tensor, window: int, probability_thr: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1–2: (candidates per channel summed over each window (B, C, h, w), elements per channel
    in each window (1, 1, h, w)), windows of side ``window`` cut at the border."""
    from scipy.stats import chi2

    if window < 1 or window % 2 == 0:
        raise ValueError(f"the window side must be odd and >= 1, got {window}")
    tau = float(chi2.ppf(probability_thr, df=1))  # P(z² ≥ τ) = 1 − probability_thr under H0
    candidates = (z.detach().double() ** 2 >= tau).double()  # (B, C, h, w)
    channels = candidates.shape[1]
    ones = torch.ones(channels, 1, window, window, dtype=torch.float64, device=z.device)
    counts = F.conv2d(candidates, ones, padding=window // 2, groups=channels)  # (B, C, h, w)
    area = F.conv2d(
        torch.ones(1, 1, *z.shape[-2:], dtype=torch.float64, device=z.device), ones[:1], padding=window // 2
    )  # (1, 1, h, w)
    return counts.round(), area.round()


def log10_probability_of_window(
    z: torch.Tensor, window: int, probability_thr: float = 0.5, channels: str = "mean"
) -> torch.Tensor:
    """Step 3: log10 P_H0(K ≥ k) of the window around every latent position. (B, C, h, w) -> (B, 1, h, w)"""
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
    counts, area = candidate_counts(z, window, probability_thr)
    n_channels = z.shape[1]
    if channels == "sum":
        k, n = counts.sum(dim=1, keepdim=True), area * n_channels
    else:
        k, n = torch.floor(counts.sum(dim=1, keepdim=True) / n_channels), area
    k, n = torch.broadcast_tensors(k, n)
    log_prob = binomial_log10_tail(k.cpu().numpy(), n.cpu().numpy(), 1.0 - probability_thr)
    return torch.from_numpy(log_prob).to(device=z.device, dtype=torch.float32)


def log_nfa(
    latents: list[torch.Tensor], window_size: int = 7, probability_thr: float = 0.5, channels: str = "mean"
) -> list[torch.Tensor]:
    """Step 4, per scale: log10 NFA = log10 N_tests + log10 P_H0 of every region, at latent resolution.

    ``latents``: [(B, C_s, h_s, w_s)], finest first. N_tests = Σ_s h_s·w_s. -> [(B, 1, h_s, w_s)]
    """
    if not latents:
        raise ValueError("log_nfa needs at least one latent map")
    n_tests = sum(z.shape[-2] * z.shape[-1] for z in latents)
    return [
        math.log10(n_tests)
        + log10_probability_of_window(z, window_for_scale(window_size, scale), probability_thr, channels)
        for scale, z in enumerate(latents)
    ]


def nfa_segmentation(
    latents: list[torch.Tensor],
    image_size: tuple[int, int],
    window_size: int = 7,
    probability_thr: float = 0.5,
    epsilon: float = 1.0,
    channels: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log10 NFA map (B, H, W), anomaly mask (B, H, W) bool = log-NFA < log10 ε) at image resolution.

    Each scale's log-NFA is upsampled bilinearly; a pixel takes the smallest (the most meaningful)
    over the scales (the union bound of the module docstring).
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon (the allowed mean number of false alarms per image) must be > 0, got {epsilon}")
    per_scale = log_nfa(latents, window_size, probability_thr, channels)
    upsampled = [
        F.interpolate(values, size=tuple(image_size), mode="bilinear", align_corners=False) for values in per_scale
    ]  # [(B, 1, H, W)]
    log_nfa_map = torch.cat(upsampled, dim=1).amin(dim=1)  # (B, H, W)
    return log_nfa_map, log_nfa_map < math.log10(epsilon)
