"""Region-of-interest features: one vector per box (R-KDE's second stage).

Given images and boxes, describe what is inside every box with a fixed-length vector, whatever the
box's size. RoIAlign (K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017, §3) does it
on a convolutional feature map: it divides the box, in feature-map coordinates, into an s×s grid and
bilinearly samples each cell, so every box gives a (C, s, s) tensor (``torchvision.ops.roi_align``).

Two extractors, both ``forward(images (B, 3, H, W), rois (N, 5)) -> (N, D)`` with ``rois`` rows
``(batch index, x1, y1, x2, y2)`` in the images' pixel coordinates:

* `RoiFeatureExtractor` — adlearn's offline default: RoIAlign on one stage of a pretrained timm
  backbone (offline ImageNet weights for ``efficientnet_lite0``), the s×s cells flattened into
  D = C·s² dimensions.
* `AlexNetRoiTrunk` — the reference's architecture (``anomalib.models.image.rkde.feature_extractor``):
  an AlexNet-style convolutional trunk (stride 16), RoIAlign 6×6, then two fully connected layers,
  D = 4096. Its weights are an anomalib release download (``rkde_feature_extractor.pth``); here they
  are loaded from a local file only, and without one the trunk raises an error naming the offline
  extractor. The reference first resizes each image so that its short side is 600 pixels (its long
  side at most 1000) and rescales the boxes to match; `AlexNetRoiTrunk` does the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RoiFeatureExtractor", "AlexNetRoiTrunk", "rois_from_boxes"]


def rois_from_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes [(N_b, 4), ...] -> RoIs (ΣN_b, 5) with the image index in the first column."""
    rows = [torch.cat([torch.full_like(b[:, :1], float(i)), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def _check_rois(rois: torch.Tensor, batch_size: int) -> None:
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (N, 5) rows of (batch index, x1, y1, x2, y2); got {tuple(rois.shape)}")
    if len(rois) and (rois[:, 0].min() < 0 or rois[:, 0].max() >= batch_size):
        raise ValueError(f"a roi names an image outside the batch of {batch_size}: use rois_from_boxes(boxes)")


class RoiFeatureExtractor(nn.Module):
    """RoIAlign on one stage of a frozen pretrained backbone, flattened: (N, C·s²).

    Args:
        backbone: a timm backbone name (``efficientnet_lite0`` has offline ImageNet weights).
        layer: the stage (``layer3`` on efficientnet_lite0 is ``blocks.4``, stride 16, 112 channels).
        output_size: s, the RoIAlign grid per box side.
        pretrained: as `TimmFeatureExtractor` (``"auto"``, ``"hub"``, ``"none"`` or a file).
    """

    def __init__(
        self, backbone: str = "efficientnet_lite0", layer: str = "layer3", output_size: int = 2, pretrained="auto"
    ) -> None:
        super().__init__()
        from adlearn.components.feature_extractors import TimmFeatureExtractor

        if int(output_size) < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        self.layer, self.output_size = layer, int(output_size)
        self.backbone = TimmFeatureExtractor(backbone, [layer], pre_trained=pretrained)
        self.stride = self.backbone.strides[0]
        self.out_dim = self.backbone.out_dims[0] * self.output_size**2

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone stage: (B, 3, H, W) -> (B, C, H/stride, W/stride)."""
        return self.backbone(images)[self.layer]

    def pool(self, feature_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIAlign of ``rois`` (N, 5) on ``feature_map`` (B, C, h, w) -> (N, C·s²)."""
        from torchvision.ops import roi_align

        _check_rois(rois, feature_map.shape[0])
        pooled = roi_align(
            feature_map,
            rois.to(feature_map.dtype),
            output_size=self.output_size,
            spatial_scale=1.0 / self.stride,
            sampling_ratio=2,
            aligned=True,  # pixel (i, j) is the point (j + 0.5, i + 0.5) in both coordinate systems
        )  # (N, C, s, s)
        return pooled.flatten(1)

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(images), rois)


class AlexNetRoiTrunk(nn.Module):
    """The reference implementation's RoI feature network (architecture only; weights from a file).

    conv 11×11/4 (64) → max-pool 3/2 → conv 5×5 (192) → max-pool 3/2 → conv 3×3 (384) → conv 3×3 (256)
    → conv 3×3 (256), each convolution followed by ReLU: a stride-16 map; RoIAlign 6×6 at scale 1/16;
    fully connected 9216 → 4096 → ReLU → 4096 → ReLU. ``weights``: a state-dict file of this module
    (the reference's checkpoint, with its keys renamed to these modules', is one), or None for random
    weights (tests only: with random weights the features mean nothing). Images come ImageNet-normalised, as
    everywhere in adlearn (the reference normalises them itself).
    """

    out_dim = 4096

    def __init__(
        self,
        weights: str | Path | None = None,
        short_side: int = 600,
        long_side: int = 1000,
    ) -> None:
        super().__init__()
        self.short_side, self.long_side = int(short_side), int(long_side)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 4096), nn.ReLU(inplace=True)
        )
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no R-KDE feature-extractor weights at {path}. Offline, use the backbone RoI features "
                    'instead: roi_features="backbone"'
                )
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.requires_grad_(False).eval()

    def resize_factor(self, height: int, width: int) -> float:
        """The reference's resize: short side to ``short_side`` unless the long side would pass ``long_side``."""
        return min(self.short_side / min(height, width), self.long_side / max(height, width))

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        _check_rois(rois, images.shape[0])
        factor = self.resize_factor(*images.shape[-2:])
        resized = F.interpolate(images, scale_factor=factor, mode="bilinear", align_corners=False)  # (B, 3, H', W')
        feature_map = self.features(resized)  # (B, 256, H'/16, W'/16)
        scaled = torch.cat([rois[:, :1], rois[:, 1:] * factor], dim=1).to(feature_map.dtype)  # (N, 5)
        pooled = roi_align(feature_map, scaled, output_size=6, spatial_scale=1 / 16, sampling_ratio=0)  # (N, 256, 6, 6)
        return self.classifier(pooled.flatten(1))  # (N, 4096)
