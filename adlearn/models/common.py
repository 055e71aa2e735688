"""Steps several models share, so each model file can name them instead of repeating them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def concat_upsampled(features: list[torch.Tensor], mode: str = "nearest") -> torch.Tensor:
    """Upsample every map to the first (finest) map's size and stack channels.

    [(B, C1, h, w), (B, C2, h/2, w/2), ...] -> (B, C1 + C2 + ..., h, w)
    """
    size = features[0].shape[-2:]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    resized = [features[0]] + [F.interpolate(f, size=size, mode=mode, **kwargs) for f in features[1:]]
    return torch.cat(resized, dim=1)


def upsample_map(patch_scores: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B, 1, h, w) patch scores -> (B, 1, H, W) at image resolution."""
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(patch_scores, size=size, mode=mode, **kwargs)
