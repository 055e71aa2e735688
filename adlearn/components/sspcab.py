"""SSPCAB — the self-supervised predictive convolutional attentive block (Ristea et al., "Self-Supervised
Predictive Convolutional Attentive Block for Anomaly Detection", CVPR 2022, Sec. 3; the reference:
``anomalib.models.components.layers.sspcab``).

A block that must *predict* each position from its surroundings only: a masked convolution whose
receptive field is four k×k corners at distance d + k from the centre — the centre itself is hidden
— followed by ReLU and squeeze-and-excitation channel attention (Hu et al., 2018: global average
pool, a bottleneck of C/r units, sigmoid weights per channel). Its output is trained to equal its
input (the auxiliary loss ``λ·MSE(input, output)``): what it cannot predict from the context is
what the network must treat as unusual. DRÆM can use it in place of its encoder's last block.
(B, C, H, W) -> (B, C, H, W)

Difference from the reference: the ReLU between the masked convolution and the attention is the paper's
(Sec. 3, and its authors' code); the reference's ``SSPCAB.forward`` feeds the masked convolution's output
to its attention module directly, with no activation in between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SSPCAB(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 1, dilation: int = 1, reduction_ratio: int = 8):
        super().__init__()
        if channels < reduction_ratio:
            raise ValueError(f"SSPCAB needs at least reduction_ratio={reduction_ratio} channels, got {channels}")
        self.pad = kernel_size + dilation  # how far the corners sit from the centre
        self.crop = kernel_size + 2 * dilation + 1  # what each corner's view cuts off the padded map
        self.corners = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size) for _ in range(4))
        self.squeeze = nn.Linear(channels, channels // reduction_ratio)
        self.excite = nn.Linear(channels // reduction_ratio, channels)

    def masked_convolution(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the four corner convolutions; the centre and the cross between them are never seen."""
        p, c = self.pad, self.crop
        x = F.pad(x, (p, p, p, p))
        views = (x[..., :-c, :-c], x[..., :-c, c:], x[..., c:, :-c], x[..., c:, c:])  # top-left ... bottom-right
        return sum(conv(view) for conv, view in zip(self.corners, views))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.masked_convolution(x))  # (B, C, H, W)
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(features.mean(dim=(2, 3))))))  # (B, C)
        return features * weights[:, :, None, None]
