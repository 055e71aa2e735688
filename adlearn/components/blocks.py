"""Convolutional building blocks that trained models assemble into encoders and decoders.

- `conv_bn_relu` — convolution → batch norm → ReLU, the unit of every CNN encoder/decoder here.
- `BasicBlock` — ResNet's basic residual block (He et al., 2016, "Deep Residual Learning", Sec. 3.2–3.3:
  y = F(x, {W_i}) + x, Eq. 1; with a projection W_s·x on the shortcut when the shape changes, Eq. 2),
  optionally changing the resolution: ``"down"`` halves it (stride-2 convolution), ``"up"`` doubles it
  (2×2 transposed convolution, as the "de-ResNet" decoder of Reverse Distillation does).
- `residual_stage` — one resolution-changing block followed by blocks at the new resolution.

Reverse Distillation's one-class bottleneck and decoder are built from these (reference:
``anomalib.models.image.reverse_distillation.components``); the reconstructive and discriminative
networks of DRÆM, the encoders/decoders of DSR and EfficientAD's patch description networks use the
same units (3×3 convolutions with batch norm and ReLU, residual blocks), so they live here rather than
in a model file.

Deliberate difference: the residual block has no "Bottleneck" (1×1–3×3–1×1) variant; models that need
ResNet-50-sized stages stack basic blocks instead (see `adlearn.models.reverse_distillation`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESAMPLE_MODES = (None, "down", "up")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3,
                 bias: bool = False, batch_norm: bool = True) -> nn.Sequential:
    """Convolution ("same" padding for odd kernels, stride ``stride``), batch norm, ReLU.

    The convolution has no bias by default (the batch norm that follows has one); with
    ``batch_norm=False`` the block is convolution → ReLU and ``bias=True`` is what you want.
    (B, C_in, H, W) -> (B, C_out, ⌈H/stride⌉, ⌈W/stride⌉) for odd ``kernel_size``
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"conv_bn_relu needs kernel_size >= 1 and stride >= 1, got {kernel_size} and {stride}")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=kernel_size // 2, bias=bias)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's basic residual block: ReLU(F(x) + shortcut(x)), F = conv3×3-BN-ReLU-conv3×3-BN.

    ``resample`` changes the resolution: ``"down"`` (the first convolution has stride 2) or ``"up"``
    (the first convolution is a 2×2 transposed convolution with stride 2); the shortcut then resamples
    too (1×1 convolution with stride 2 / 2×2 transposed convolution, each followed by batch norm) so
    that the two branches can be added. Without resampling and with equal channel counts the shortcut
    is the identity.
    (B, C_in, h, w) -> (B, C_out, h', w'),  h' = h/2 ("down"), 2h ("up") or h
    """

    def __init__(self, in_channels: int, out_channels: int, resample: str | None = None):
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if resample == "up":
            first = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
            shortcut = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
        else:
            stride = 2 if resample == "down" else 1
            first = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
            shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.residual = nn.Sequential(first, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                                      nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        needs_projection = resample is not None or in_channels != out_channels
        self.shortcut = nn.Sequential(shortcut, nn.BatchNorm2d(out_channels)) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


def residual_stage(in_channels: int, out_channels: int, resample: str | None, blocks: int = 2) -> nn.Sequential:
    """One `BasicBlock` that resamples (and changes the channels), then ``blocks - 1`` at the new size."""
    if blocks < 1:
        raise ValueError(f"a residual stage needs at least one block, got blocks={blocks}")
    layers = [BasicBlock(in_channels, out_channels, resample)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)
