"""Steps several models share, so each model file can name them instead of repeating them."""

from __future__ import annotations

import math

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


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) along the channels, at every position: 0 where the vectors agree, 2 when opposite.

    Computed as ½‖â − b̂‖² with â = a / ‖a‖ (the same number: ‖â − b̂‖² = 2 − 2 â·b̂).
    (B, C, h, w), (B, C, h, w) -> (B, 1, h, w)
    """
    a_hat, b_hat = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return 0.5 * (a_hat - b_hat).pow(2).sum(dim=1, keepdim=True)


def upsample_map(
    patch_scores: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False
) -> torch.Tensor:
    """(B, 1, h, w) patch scores -> (B, 1, H, W) at image resolution."""
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    return F.interpolate(patch_scores, size=size, mode=mode, **kwargs)


LAYER_MAP_MODES = ("add", "multiply", "mean")


def combine_layer_maps(
    maps: list[torch.Tensor], size: tuple[int, int], mode: str, align_corners: bool = False
) -> torch.Tensor:
    """Bilinearly upsample per-layer maps to ``size`` and combine them into one anomaly map.

    ``"add"`` sums them (Reverse Distillation), ``"multiply"`` takes their product — a pixel scores high
    only where every layer agrees (STFPM) — and ``"mean"`` averages them (FastFlow). Sums and products
    run layer by layer, first to last, so the floating-point result does not depend on anything else.
    [(B, 1, h_l, w_l)] -> (B, 1, H, W)
    """
    if mode not in LAYER_MAP_MODES:
        raise ValueError(f"mode must be one of {LAYER_MAP_MODES}, got {mode!r}")
    if not maps:
        raise ValueError("combine_layer_maps needs at least one layer map")
    upsampled = [upsample_map(layer_map, size, align_corners=align_corners) for layer_map in maps]
    if mode == "mean":
        return torch.cat(upsampled, dim=1).mean(dim=1, keepdim=True)
    combined = upsampled[0]
    for layer_map in upsampled[1:]:
        combined = combined + layer_map if mode == "add" else combined * layer_map
    return combined


# The paper transform of PatchCore and friends: resize 256, center crop 224 (= 7/8 of the resize).
CROP_FRACTION = 224 / 256


def resolve_center_crop(
    image_size: int | tuple[int, int], center_crop: int | str | None
) -> int | tuple[int, int] | None:
    """``"auto"`` -> 7/8 of ``image_size`` (256 -> 224, 64 -> 56), so the crop follows any resize."""
    if center_crop != "auto":
        return center_crop
    if isinstance(image_size, int):
        return round(image_size * CROP_FRACTION)
    return tuple(round(side * CROP_FRACTION) for side in image_size)


def prediction_from_map(anomaly_map: torch.Tensor):
    """A `Prediction` whose image score is the anomaly map's maximum (the most anomalous pixel).

    (B, H, W) -> Prediction(pred_score (B,), anomaly_map (B, H, W))
    """
    from adlearn.models.base import Prediction

    return Prediction(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map)


def exact_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-quantile of all elements, with ``torch.quantile``'s linear interpolation, at any size.

    ``torch.quantile`` refused inputs above 2²⁴ elements in older torch versions; two k-th order
    statistics (``kthvalue``) give the same number without any limit: position p = q·(n − 1) between ranks ⌊p⌋ and ⌈p⌉.
    """
    flat = values.flatten()
    if flat.numel() == 0:
        raise ValueError("exact_quantile of an empty tensor")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    position = q * (flat.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    value_low = flat.kthvalue(low + 1).values
    if high == low:
        return value_low
    value_high = flat.kthvalue(high + 1).values
    return value_low + (position - low) * (value_high - value_low)


def save_cached_weights(module: torch.nn.Module, path) -> None:
    """Write ``module``'s state dict to ``path`` through a ``.partial`` file, so that a cache never holds
    a half-written file (the offline-trained weights: EfficientAD's teacher, DSR's VQ model)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(module.state_dict(), partial)
    partial.replace(path)
