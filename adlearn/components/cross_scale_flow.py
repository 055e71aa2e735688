"""Cross-scale normalizing flow: three feature maps of one image transformed together (CS-Flow).

Rudolph et al., "Fully Convolutional Cross-Scale-Flows for Image-based Defect Detection", WACV 2022
(arXiv:2110.02855), Sec. 3.2–3.3; anomalib ``anomalib.models.image.csflow.torch_model``
(``CrossConvolutions``, ``ParallelPermute``, ``ParallelGlowCouplingLayer``, ``CrossScaleFlow``).

The inputs are three maps x⁰, x¹, x² (finest first) with the same channels C and sizes h, h/2, h/4.
One step of the flow is:

1. **Permute** the channels of each scale with a fixed random permutation (``ParallelPermute``;
   log-det 0).
2. **Affine coupling on all scales at once** (Glow / Real-NVP, ``ParallelGlowCouplingLayer``). Split
   each scale's channels in halves a, b (C₁ = C − C//2, C₂ = C//2):

       (s, t)  = CrossConv₂(b⁰, b¹, b²)        a'ⁱ = a ⁱ ⊙ e(sⁱ) + tⁱ
       (s', t') = CrossConv₁(a'⁰, a'¹, a'²)    b'ⁱ = bⁱ ⊙ e(s'ⁱ) + t'ⁱ

   with the soft clamp e(s) = exp(α · (2/π) · atan(s / α)) (α = ``clamp``; |log e| < α, smooth, unlike
   a hard clip), so log|det J| = Σ (log e(s) + log e(s')) over all scales, channels and positions.
   The inverse runs the two halves backwards: b = (b' − t') / e(s'), then a = (a' − t) / e(s).
3. **Cross-convolutions** (the subnet, Fig. 3 of the paper): per scale a conv → LeakyReLU(0.1) → conv,
   *plus* what the neighbouring scales say — the coarser scale's hidden map upsampled (bilinear) and
   convolved, the finer scale's hidden map convolved with stride 2. So every output of scale i sees
   scales i−1, i, i+1. Each scale's output is multiplied by a learned γⁱ that starts at 0, so every
   coupling starts as the identity (a stable start, the ReZero idea).

`CrossScaleFlow` chains ``n_blocks`` (permute, coupling) steps; the last coupling uses kernel 5
("a larger receptive field at the end", as the reference), the others kernel 3.

Deliberate differences: the reference upsamples by a factor 2; here the coarser map is resized to the
finer map's exact size (the same when sizes halve exactly, and no crash when they do not). The
permutations are drawn from a generator seeded with the block index (as the reference), stored as
buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossConvolutions", "ParallelPermute", "CrossScaleCoupling", "CrossScaleFlow", "soft_clamp_log_scale"]

N_SCALES = 3


def soft_clamp_log_scale(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """log e(s) = α·(2/π)·atan(s/α): ≈ 0.64·s near 0 (the reference's factor 0.636), bounded by ±α."""
    return clamp * (2.0 / math.pi) * torch.atan(s / clamp)


def _check_scales(xs, channels: int, what: str) -> None:
    if len(xs) != N_SCALES:
        raise ValueError(f"{what} takes {N_SCALES} maps (finest first), got {len(xs)}")
    for x in xs:
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} expects maps of shape (B, {channels}, h, w), got {tuple(x.shape)}")


class CrossConvolutions(nn.Module):
    """The coupling subnet of step 3: three maps (B, in, h_i, w_i) -> three maps (B, out, h_i, w_i)."""

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int = 3, leaky_slope: float = 0.1
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd ('same' padding), got {kernel_size}")
        pad = kernel_size // 2

        def conv(c_in, c_out, stride=1):
            return nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=pad)

        self.in_channels = in_channels
        self.hidden = nn.ModuleList([conv(in_channels, hidden_channels) for _ in range(N_SCALES)])
        self.output = nn.ModuleList([conv(hidden_channels, out_channels) for _ in range(N_SCALES)])
        self.up = nn.ModuleList([conv(hidden_channels, out_channels) for _ in range(N_SCALES - 1)])  # i+1 -> i
        self.down = nn.ModuleList(
            [conv(hidden_channels, out_channels, stride=2) for _ in range(N_SCALES - 1)]
        )  # i -> i+1
        self.gamma = nn.Parameter(torch.zeros(N_SCALES))
        self.activation = nn.LeakyReLU(leaky_slope)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        hidden = [self.activation(conv(x)) for conv, x in zip(self.hidden, xs)]  # (B, hidden, h_i, w_i)
        outputs = [conv(h) for conv, h in zip(self.output, hidden)]  # own scale
        for i in range(N_SCALES - 1):
            coarser = F.interpolate(hidden[i + 1], size=hidden[i].shape[-2:], mode="bilinear", align_corners=False)
            outputs[i] = outputs[i] + self.up[i](coarser)  # coarser -> finer
            finer = self.down[i](hidden[i])  # finer -> coarser (stride 2)
            if finer.shape[-2:] != outputs[i + 1].shape[-2:]:
                finer = F.interpolate(finer, size=outputs[i + 1].shape[-2:], mode="bilinear", align_corners=False)
            outputs[i + 1] = outputs[i + 1] + finer
        return [self.gamma[i] * out for i, out in enumerate(outputs)]


class ParallelPermute(nn.Module):
    """Step 1: one fixed random channel permutation per scale (drawn from a generator seeded with ``seed``)."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        orders = torch.stack([torch.randperm(channels, generator=generator) for _ in range(N_SCALES)])
        self.register_buffer("orders", orders)  # (3, C)
        self.register_buffer("inverse_orders", torch.argsort(orders, dim=1))

    def forward(self, xs: list[torch.Tensor], rev: bool = False) -> list[torch.Tensor]:
        orders = self.inverse_orders if rev else self.orders
        return [x.index_select(1, order) for x, order in zip(xs, orders)]


class CrossScaleCoupling(nn.Module):
    """Step 2: the two-sided affine coupling of all three scales, with cross-convolution subnets."""

    def __init__(self, channels: int, hidden_channels: int, clamp: float = 3.0, kernel_size: int = 3) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.channels, self.clamp = channels, float(clamp)
        self.split1, self.split2 = channels - channels // 2, channels // 2
        self.subnet2 = CrossConvolutions(self.split2, 2 * self.split1, hidden_channels, kernel_size)  # b -> (s, t) of a
        self.subnet1 = CrossConvolutions(
            self.split1, 2 * self.split2, hidden_channels, kernel_size
        )  # a' -> (s', t') of b

    def _scale_shift(self, subnet: CrossConvolutions, conditions: list[torch.Tensor], width: int):
        raw = subnet(conditions)
        return [(soft_clamp_log_scale(r[:, :width], self.clamp), r[:, width:]) for r in raw]

    def forward(self, xs: list[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([3 maps], log|det J| (B,)); ``rev=True`` inverts and returns the inverse's log-det."""
        _check_scales(xs, self.channels, "CrossScaleCoupling")
        halves = [torch.split(x, [self.split1, self.split2], dim=1) for x in xs]
        a, b = [h[0] for h in halves], [h[1] for h in halves]
        log_det = xs[0].new_zeros(xs[0].shape[0])
        if not rev:
            coefficients = self._scale_shift(self.subnet2, b, self.split1)
            a = [ai * torch.exp(s) + t for ai, (s, t) in zip(a, coefficients)]
            log_det = log_det + sum(s.flatten(1).sum(1) for s, _ in coefficients)
            coefficients = self._scale_shift(self.subnet1, a, self.split2)
            b = [bi * torch.exp(s) + t for bi, (s, t) in zip(b, coefficients)]
            log_det = log_det + sum(s.flatten(1).sum(1) for s, _ in coefficients)
        else:
            coefficients = self._scale_shift(self.subnet1, a, self.split2)
            b = [(bi - t) * torch.exp(-s) for bi, (s, t) in zip(b, coefficients)]
            log_det = log_det - sum(s.flatten(1).sum(1) for s, _ in coefficients)
            coefficients = self._scale_shift(self.subnet2, b, self.split1)
            a = [(ai - t) * torch.exp(-s) for ai, (s, t) in zip(a, coefficients)]
            log_det = log_det - sum(s.flatten(1).sum(1) for s, _ in coefficients)
        return [torch.cat([ai, bi], dim=1) for ai, bi in zip(a, b)], log_det


class CrossScaleFlow(nn.Module):
    """``n_blocks`` × (ParallelPermute, CrossScaleCoupling): [x⁰, x¹, x²] -> ([z⁰, z¹, z²], log|det J| (B,)).

    Example:
        >>> flow = CrossScaleFlow(channels=8, n_blocks=2, hidden_channels=16)
        >>> xs = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2), torch.randn(2, 8, 1, 1)]
        >>> zs, log_det = flow(xs)
        >>> [tuple(z.shape) for z in zs], tuple(log_det.shape)
        ([(2, 8, 4, 4), (2, 8, 2, 2), (2, 8, 1, 1)], (2,))
    """

    def __init__(self, channels: int, n_blocks: int = 4, hidden_channels: int = 1024, clamp: float = 3.0) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.channels = channels
        self.permutations = nn.ModuleList([ParallelPermute(channels, seed=k) for k in range(n_blocks)])
        self.couplings = nn.ModuleList(
            [
                CrossScaleCoupling(channels, hidden_channels, clamp, kernel_size=5 if k == n_blocks - 1 else 3)
                for k in range(n_blocks)
            ]
        )

    def forward(self, xs: list[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        _check_scales(xs, self.channels, "CrossScaleFlow")
        xs = list(xs)
        log_det = xs[0].new_zeros(xs[0].shape[0])
        steps = list(zip(self.permutations, self.couplings))
        if not rev:
            for permute, coupling in steps:
                xs, block_log_det = coupling(permute(xs))
                log_det = log_det + block_log_det
        else:
            for permute, coupling in reversed(steps):
                xs, block_log_det = coupling(xs, rev=True)
                xs = permute(xs, rev=True)
                log_det = log_det + block_log_det
        return xs, log_det
