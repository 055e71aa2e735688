"""`GaussianBlur2d`: a fixed Gaussian smoothing filter for anomaly maps
(reference: ``anomalib.models.components.filters.GaussianBlur2d``).

PaDiM, PatchCore and CFA smooth their upsampled anomaly maps with σ = 4. The kernel is a sampled
Gaussian

    g(t) = exp(−t² / (2σ²)),   t = −r, …, r,    r = int(4σ + 0.5)  (kernel size 2r + 1; 33 for σ=4)

normalised to sum 1 by default. A 2-D Gaussian is separable — g(y, x) = g_y(y) · g_x(x) — so the
blur is two 1-D depthwise convolutions (kh + kw multiplications per pixel instead of kh·kw). Both
kernels are built **once**, at construction, as buffers of shape ``(channels, 1, kh, 1)`` and
``(channels, 1, 1, kw)`` (``groups=channels``: each channel is blurred on its own); ``kernel``
gives the equivalent 2-D kernel ``(channels, 1, kh, kw)``.

``padding="same"`` pads by half the kernel with ``border_type`` so the output keeps H×W; any other
value gives a "valid" convolution ``(H − kh + 1, W − kw + 1)``.

**Speed: the blur as two matrix products.** A 1-D blur along an axis, padding included, is a linear
map, so it is a matrix: with ``A_y`` (H×H) and ``A_x`` (W×W), ``blur(X) = A_y · X · A_xᵀ`` for every
(H, W) plane X. We get each matrix by blurring the identity with the padded 1-D convolution itself
(``A_y = blur_y(I_H)``: column j is where row j's mass ends up), so the borders are exactly those of
the convolution. Two small matrix products run at BLAS speed; on a CPU a 33-tap depthwise
convolution of one channel does not (timings: docs/benchmarks.md).
The matrices are cached per size, device and dtype. ``method="conv"`` keeps the convolutions.

Border types are torch's ``F.pad`` modes. Their names do NOT match ``scipy.ndimage``'s:

=================  =========================  ==================================
torch border_type  scipy.ndimage mode         padding of  a b c d
=================  =========================  ==================================
``"reflect"``      ``"mirror"``               c b | a b c d | c b   (edge not repeated)
``"replicate"``    ``"nearest"``              a a | a b c d | d d
``"circular"``     ``"wrap"``                 c d | a b c d | a b
``"constant"``     ``"constant"`` (cval=0)    0 0 | a b c d | 0 0
(none)             ``"reflect"`` (its default) b a | a b c d | d c   (edge repeated)
=================  =========================  ==================================

So ``GaussianBlur2d(σ)`` (border "reflect") equals ``scipy.ndimage.gaussian_filter(x, σ,
mode="mirror", truncate=4.0)``; scipy's radius ``int(truncate·σ + 0.5)`` is our kernel radius.

Deviation: the kernel size must be odd (a centred kernel); ``normalize=False`` keeps the raw samples
``exp(−t²/2σ²)`` (peak 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BORDER_TYPES = ("reflect", "replicate", "circular", "constant")


def gaussian_kernel1d(sigma: float, kernel_size: int, normalize: bool = True) -> torch.Tensor:
    """Sampled 1-D Gaussian ``(kernel_size,)`` centred on the middle tap."""
    radius = kernel_size // 2
    positions = torch.arange(-radius, radius + 1, dtype=torch.float64)  # (k,)
    kernel = torch.exp(-(positions**2) / (2.0 * sigma**2))
    if normalize:
        kernel = kernel / kernel.sum()
    return kernel.to(torch.float32)


class GaussianBlur2d(nn.Module):
    """Depthwise, separable Gaussian blur of ``(B, channels, H, W)`` tensors.

    Args:
        sigma: standard deviation, a float or ``(sigma_y, sigma_x)``.
        channels: number of input channels (fixed at construction).
        kernel_size: odd int or ``(kh, kw)``; default ``2·int(4σ + 0.5) + 1`` per axis.
        normalize: make each 1-D kernel (hence the 2-D kernel) sum to 1.
        border_type: ``F.pad`` mode for ``padding="same"`` (see the module table for scipy names).
        padding: ``"same"`` keeps H×W; anything else is a valid convolution.
        method: ``"matmul"`` (default; ``"same"`` padding only: two matrix products, see the module
            docstring) or ``"conv"`` (two depthwise convolutions). Same numbers up to rounding.
    """

    def __init__(
        self,
        sigma: float | tuple[float, float],
        channels: int = 1,
        kernel_size: int | tuple[int, int] | None = None,
        normalize: bool = True,
        border_type: str = "reflect",
        padding: str = "same",
        method: str = "matmul",
    ) -> None:
        super().__init__()
        sigma_y, sigma_x = _pair(sigma, "sigma", float)
        if sigma_y <= 0 or sigma_x <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if kernel_size is None:
            kernel_size = (2 * int(4.0 * sigma_y + 0.5) + 1, 2 * int(4.0 * sigma_x + 0.5) + 1)
        kernel_h, kernel_w = _pair(kernel_size, "kernel_size", int)
        if kernel_h < 1 or kernel_w < 1 or kernel_h % 2 == 0 or kernel_w % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive (a centred kernel), got {kernel_size}")
        if border_type not in _BORDER_TYPES:
            raise ValueError(
                f"border_type must be one of {_BORDER_TYPES}, got {border_type!r}. "
                f"(scipy's 'mirror' is torch's 'reflect', 'nearest' is 'replicate'.)"
            )
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if method not in ("matmul", "conv"):
            raise ValueError(f"method must be 'matmul' or 'conv', got {method!r}")

        self.sigma = (sigma_y, sigma_x)
        self.channels = channels
        self.kernel_size = (kernel_h, kernel_w)
        self.normalize = normalize
        self.border_type = border_type
        self.padding = padding
        self.method = method
        self._matrices: dict = {}  # (H, W, device, dtype) -> (A_y, A_x); a cache, never saved

        # One 1-D kernel per axis, repeated per channel for a depthwise (groups=channels) conv.
        ky = gaussian_kernel1d(sigma_y, kernel_h, normalize)  # (kh,)
        kx = gaussian_kernel1d(sigma_x, kernel_w, normalize)  # (kw,)
        self.register_buffer("kernel_y", ky.view(1, 1, kernel_h, 1).repeat(channels, 1, 1, 1))
        self.register_buffer("kernel_x", kx.view(1, 1, 1, kernel_w).repeat(channels, 1, 1, 1))

    @property
    def kernel(self) -> torch.Tensor:
        """The equivalent 2-D depthwise kernel ``(channels, 1, kh, kw)`` (outer product)."""
        return self.kernel_y * self.kernel_x

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``(B, channels, H, W)``; 'same' keeps the shape, otherwise ``(H−kh+1, W−kw+1)``."""
        if input_tensor.dim() != 4 or input_tensor.shape[1] != self.channels:
            raise ValueError(
                f"expected input of shape (B, {self.channels}, H, W), got "
                f"{tuple(input_tensor.shape)}; this filter was built for "
                f"channels={self.channels}"
            )
        kernel_h, kernel_w = self.kernel_size
        height, width = input_tensor.shape[-2:]
        x = input_tensor if input_tensor.is_floating_point() else input_tensor.float()

        if self.padding == "same":
            pad_h, pad_w = kernel_h // 2, kernel_w // 2
            if self.border_type == "reflect" and (pad_h >= height or pad_w >= width):
                raise ValueError(
                    f"'reflect' padding of {pad_h}×{pad_w} needs an input larger "
                    f"than that, got {height}×{width}; use a smaller sigma/kernel or "
                    f"border_type='replicate'"
                )
            if self.method == "matmul":
                blur_y, blur_x = self.blur_matrices(height, width, x.device, x.dtype)  # (H, H), (W, W)
                return blur_y @ x @ blur_x.T  # (B, C, H, W)
            x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=self.border_type)
        elif height < kernel_h or width < kernel_w:
            raise ValueError(
                f"a valid convolution needs an input of at least {kernel_h}×{kernel_w}, got {height}×{width}"
            )
        return self._convolve(x)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """Separable blur of an already padded input: vertical pass, then horizontal pass."""
        ky = self.kernel_y.to(x.device, x.dtype)
        kx = self.kernel_x.to(x.device, x.dtype)
        x = F.conv2d(x, ky, groups=self.channels)
        return F.conv2d(x, kx, groups=self.channels)

    def blur_matrices(self, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_y, A_x)`` with ``blur(X) = A_y · X · A_xᵀ`` for 'same' padding (built once per size)."""
        key = (height, width, str(device), dtype)
        if key not in self._matrices:
            pad_h, pad_w = self.kernel_size[0] // 2, self.kernel_size[1] // 2
            ky = self.kernel_y[:1].to(device, torch.float64)  # (1, 1, kh, 1)
            kx = self.kernel_x[:1].to(device, torch.float64)  # (1, 1, 1, kw)
            eye_h = torch.eye(height, device=device, dtype=torch.float64)[None, None]
            eye_w = torch.eye(width, device=device, dtype=torch.float64)[None, None]
            # Blurring the identity down its columns gives A_y; across its rows gives A_xᵀ.
            blur_y = F.conv2d(F.pad(eye_h, (0, 0, pad_h, pad_h), mode=self.border_type), ky)[0, 0]
            blur_x_t = F.conv2d(F.pad(eye_w, (pad_w, pad_w, 0, 0), mode=self.border_type), kx)[0, 0]
            self._matrices = {key: (blur_y.to(dtype), blur_x_t.T.contiguous().to(dtype))}  # keep one size
        return self._matrices[key]

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, channels={self.channels}, kernel_size={self.kernel_size}, "
            f"border_type={self.border_type!r}, padding={self.padding!r}"
        )


def _pair(value, name: str, cast):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair, got {value!r}")
        return cast(value[0]), cast(value[1])
    return cast(value), cast(value)
