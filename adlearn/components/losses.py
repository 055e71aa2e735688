"""Losses that trained models share: SSIM (structural similarity) and the focal loss.

**SSIM** (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004, Eq. 13). In a Gaussian window (11×11, σ = 1.5) around every
pixel, with local means μ, variances σ² and covariance σ_xy (weighted by the window, population
estimates):

    SSIM(x, y) = (2 μ_x μ_y + C1)(2 σ_xy + C2) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)),
    C1 = (0.01 L)², C2 = (0.03 L)²,  L = the data range (1 for images in [0, 1]).

It is 1 for identical images and compares local brightness, contrast and structure, which a plain
L2 misses (a blurry reconstruction has a small L2 and a low SSIM). DRÆM trains its reconstruction
with ``1 − SSIM`` (the reference: ``anomalib.models.image.draem.loss``, twice kornia's
``SSIMLoss``, which is (1 − SSIM)/2). ``padding="valid"`` keeps only the windows inside the image
(scikit-image's ``structural_similarity`` averages those); ``"reflect"`` keeps the image size.

**Focal loss** (Lin, Goyal, Girshick, He & Dollár, "Focal loss for dense object detection", ICCV
2017, Eq. 5): FL(p_t) = −α (1 − p_t)^γ log p_t, with p_t the predicted probability of the true
class. With γ = 2 the easy, well-classified pixels (most of a mask) count little and the rare
anomalous pixels count more. DRÆM and DSR use α = 1, γ = 2 on two-class logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_PADDINGS = ("valid", "reflect")


def gaussian_window(window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian taps (window_size,), summing to 1."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    offsets = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    taps = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    return taps / taps.sum()


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    padding: str = "reflect",
) -> torch.Tensor:
    """SSIM at every pixel, per channel: (B, C, H, W) × 2 -> (B, C, H', W') (H' = H − window_size + 1 for
    ``padding="valid"``, H for ``"reflect"``)."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim needs two (B, C, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"padding must be one of {SSIM_PADDINGS}, got {padding!r}")
    channels = x.shape[1]
    taps = gaussian_window(window_size, sigma).to(x)
    kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, window_size, window_size)  # separable Gaussian

    def blur(image: torch.Tensor) -> torch.Tensor:  # the window-weighted local mean, channel by channel
        if padding == "reflect":
            half = window_size // 2
            image = F.pad(image, (half, half, half, half), mode="reflect")
        return F.conv2d(image, kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    padding: str = "reflect",
) -> torch.Tensor:
    """Mean SSIM over pixels, channels and the batch (a scalar)."""
    return ssim_map(x, y, window_size, sigma, data_range, padding).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, data_range: float = 1.0) -> torch.Tensor:
    """1 − SSIM (0 for identical images)."""
    return 1.0 - ssim(x, y, window_size, data_range=data_range)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of −α (1 − p_t)^γ log p_t.

    ``logits`` (B, K, H, W) class scores; ``target`` (B, H, W) or (B, 1, H, W) class indices (a 0/1
    mask for K = 2).
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    log_p = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
    log_p_true = log_p.gather(1, target.long()[:, None]).squeeze(1)  # (B, H, W)
    p_true = log_p_true.exp()
    return (-alpha * (1 - p_true).pow(gamma) * log_p_true).mean()


__all__ = ["focal_loss", "gaussian_window", "ssim", "ssim_loss", "ssim_map"]
