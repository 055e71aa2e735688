"""Per-channel mean and standard deviation of feature maps, streamed over a dataset.

Models that normalise a network's output channels with statistics of the training images (EfficientAD's
teacher, Batzner et al. 2024, Sec. 3.1; CS-Flow's optional feature standardisation) see the maps one
batch at a time: the sums of x and x² are accumulated in float64, so one pass gives μ_c and
σ_c = sqrt(E[x²] − μ_c²) over every image and position without holding the maps.
"""

from __future__ import annotations

import torch


class ChannelStatistics:
    """Accumulate (B, C, h, w) maps with `update`; `mean_std` gives μ and σ, each (C,) float32.

    σ is clamped below at ``min_std`` so that a constant (dead) channel divides to a finite value.
    """

    def __init__(self, min_std: float = 1e-6):
        self.min_std = min_std
        self.sum = self.sum_sq = None
        self.count = 0

    @torch.no_grad()
    def update(self, maps: torch.Tensor) -> ChannelStatistics:
        x = maps.double().transpose(0, 1).flatten(1)  # (C, B·h·w)
        if self.sum is None:
            self.sum, self.sum_sq = x.sum(1), x.pow(2).sum(1)
        else:
            self.sum += x.sum(1)
            self.sum_sq += x.pow(2).sum(1)
        self.count += x.shape[1]
        return self

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sum is None:
            raise ValueError("ChannelStatistics.mean_std: no maps were given to update()")
        mean = self.sum / self.count
        std = (self.sum_sq / self.count - mean.pow(2)).clamp_min(0).sqrt()
        return mean.float(), std.float().clamp_min(self.min_std)
