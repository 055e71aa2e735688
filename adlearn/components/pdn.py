"""The patch description network (PDN) of EfficientAD (Batzner, Heckler & König, WACV 2024, Sec. 3.1).

A PDN is four (small) or six (medium) unpadded convolutions with two average poolings: each output
feature describes one 33 × 33 pixel patch, and neighbouring features are 4 pixels apart. EfficientAD uses
it twice: as the teacher, distilled from an ImageNet CNN, and as the student, with twice the channels.
Reference: ``anomalib.models.image.efficient_ad.torch_model`` (``PDN_S``, ``PDN_M``); the parameter names
follow it, so its pretrained teacher files load.

    pdn = PatchDescriptionNetwork(384, "small")
    pdn(images)                        # (B, 3, H, W) -> (B, 384, H/4 − 8, W/4 − 8)
    pdn(images, slice(0, 192))         # only those output channels, at a fraction of the last layer's cost
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PDN_SIZES = ("small", "medium")
PDN_BORDER = 4  # output positions an unpadded PDN loses at each border: its output is H/4 − 2 · 4


class PatchDescriptionNetwork(nn.Module):
    """PDN: ImageNet-normalised image -> (B, out_channels, H/4 − 8, W/4 − 8).

    small:  conv4×4(3→128) ReLU avgpool2 conv4×4(128→256) ReLU avgpool2 conv3×3(256→256) ReLU conv4×4(256→out)
    medium: conv4×4(3→256) ReLU avgpool2 conv4×4(256→512) ReLU avgpool2 conv1×1 ReLU conv3×3 ReLU
            conv4×4(512→out) ReLU conv1×1(out→out)
    All convolutions unpadded: each output feature sees a 33 × 33 pixel patch, 4 pixels apart.
    """

    def __init__(self, out_channels: int = 384, model_size: str = "small"):
        super().__init__()
        if model_size not in PDN_SIZES:
            raise ValueError(f"model_size must be one of {PDN_SIZES}, got {model_size!r}")
        self.model_size = model_size
        width = 128 if model_size == "small" else 256
        self.conv1 = nn.Conv2d(3, width, kernel_size=4)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=4)
        if model_size == "small":
            self.conv3 = nn.Conv2d(2 * width, 2 * width, kernel_size=3)
            self.conv4 = nn.Conv2d(2 * width, out_channels, kernel_size=4)
        else:
            self.conv3 = nn.Conv2d(2 * width, 2 * width, kernel_size=1)
            self.conv4 = nn.Conv2d(2 * width, 2 * width, kernel_size=3)
            self.conv5 = nn.Conv2d(2 * width, out_channels, kernel_size=4)
            self.conv6 = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, images: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """``channels``: compute only these output channels (the last convolution's rows), e.g. the
        student's ``slice(0, 384)`` where only its teacher half is used — the same numbers as
        ``forward(images)[:, channels]`` at a fraction of the last layer's cost."""
        x = F.avg_pool2d(F.relu(self.conv1(images)), 2)  # (B, w, H/2 − 2, ...)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, H/4 − 3, ...)
        x = F.relu(self.conv3(x))
        if self.model_size == "small":
            return _conv_rows(self.conv4, x, channels)  # (B, out, H/4 − 8, W/4 − 8)
        x = F.relu(self.conv5(F.relu(self.conv4(x))))
        return _conv_rows(self.conv6, x, channels)


def _conv_rows(conv: nn.Conv2d, x: torch.Tensor, channels: slice | None) -> torch.Tensor:
    """``conv(x)[:, channels]`` computed with only those output channels' weights."""
    if channels is None:
        return conv(x)
    bias = conv.bias[channels] if conv.bias is not None else None
    return F.conv2d(x, conv.weight[channels], bias, conv.stride, conv.padding, conv.dilation, conv.groups)


__all__ = ["PDN_BORDER", "PDN_SIZES", "PatchDescriptionNetwork"]
