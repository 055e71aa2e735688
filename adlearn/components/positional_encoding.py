"""2-D sinusoidal positional encoding: where a feature vector sits in the image, as a vector.

CFLOW (Gudovskiy et al., WACV 2022, Sec. 3.3; anomalib ``anomalib.models.image.cflow.utils``
``positional_encoding_2d``) conditions its flow on the position of each feature vector, so one flow
can model a different density in the bottle's centre and at its rim. The code is the 1-D encoding of
the Transformer (Vaswani et al., 2017, Sec. 3.5) applied to each axis: with D channels, the first D/2
encode the column x and the last D/2 the row y, in sin/cos pairs of falling frequency:

    P[2i,       y, x] = sin(x · ω_i)        P[D/2 + 2i,     y, x] = sin(y · ω_i)
    P[2i + 1,   y, x] = cos(x · ω_i)        P[D/2 + 2i + 1, y, x] = cos(y · ω_i)
    ω_i = 10000^(−2i / (D/2)),   i = 0 … D/4 − 1

so D must be a multiple of 4. Positions are integer grid indices (0 … W − 1), as in the reference:
the same cell index means the same code whatever the layer's resolution.
"""

from __future__ import annotations

import math

import torch

__all__ = ["positional_encoding_2d"]


def positional_encoding_2d(
    channels: int, height: int, width: int, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (channels, height, width) sinusoidal code of every grid position (see the module docstring)."""
    if channels <= 0 or channels % 4 != 0:
        raise ValueError(
            f"positional encoding: channels must be a positive multiple of 4 (sin and cos for x "
            f"and for y), got {channels}; e.g. condition_vector=128"
        )
    if height < 1 or width < 1:
        raise ValueError(f"positional encoding: height and width must be >= 1, got {height}x{width}")
    half = channels // 2  # channels per axis
    frequencies = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(10000.0) / half))  # (D/4,)
    x = torch.arange(width, dtype=torch.float64)[:, None] * frequencies  # (W, D/4)
    y = torch.arange(height, dtype=torch.float64)[:, None] * frequencies  # (H, D/4)
    code = torch.zeros(channels, height, width, dtype=torch.float64)
    code[0:half:2] = torch.sin(x).T[:, None, :]  # (D/4, 1, W) broadcast over rows
    code[1:half:2] = torch.cos(x).T[:, None, :]
    code[half::2] = torch.sin(y).T[:, :, None]  # (D/4, H, 1) broadcast over columns
    code[half + 1 :: 2] = torch.cos(y).T[:, :, None]
    return code.to(device=device, dtype=dtype)
