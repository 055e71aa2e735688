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


NORMS = ("batch", "instance")


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    stride: int = 1,
    kernel_size: int = 3,
    bias: bool = False,
    batch_norm: bool = True,
    norm: str = "batch",
) -> nn.Sequential:
    """Convolution ("same" padding for odd kernels, stride ``stride``), batch norm, ReLU.

    The convolution has no bias by default (the batch norm that follows has one); with
    ``batch_norm=False`` the block is convolution → ReLU and ``bias=True`` is what you want.
    ``norm="instance"`` normalises each image's channels on their own (instance norm, no learnt
    affine: DSR's networks) instead of over the batch.
    (B, C_in, H, W) -> (B, C_out, ⌈H/stride⌉, ⌈W/stride⌉) for odd ``kernel_size``
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"conv_bn_relu needs kernel_size >= 1 and stride >= 1, got {kernel_size} and {stride}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels) if norm == "batch" else nn.InstanceNorm2d(out_channels))
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
        self.residual = nn.Sequential(
            first,
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
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


# ----------------------------------------------------------------------------- U-Net units
def double_conv(
    in_channels: int, out_channels: int, mid_channels: int | None = None, norm: str = "batch"
) -> nn.Sequential:
    """Two `conv_bn_relu` in a row (in -> mid -> out): one level of a U-Net (Ronneberger et al., 2015).
    (B, C_in, H, W) -> (B, C_out, H, W)"""
    mid_channels = mid_channels or out_channels
    return nn.Sequential(
        conv_bn_relu(in_channels, mid_channels, bias=True, norm=norm),
        conv_bn_relu(mid_channels, out_channels, bias=True, norm=norm),
    )


def up_conv(in_channels: int, out_channels: int, norm: str = "batch") -> nn.Sequential:
    """Bilinear ×2 upsampling (align_corners=True), then `conv_bn_relu`. (B, C_in, h, w) -> (B, C_out, 2h, 2w)"""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        conv_bn_relu(in_channels, out_channels, bias=True, norm=norm),
    )


class UNet(nn.Module):
    """A U-Net: ``len(widths)`` encoder levels (`double_conv`, 2×2 max-pooling between them) and a decoder
    that climbs back level by level — `up_conv`, concatenation with the encoder's map of that level (the
    skip connection), `double_conv` — then a 3×3 convolution to ``out_channels`` logits.

    Decoder level k outputs the width of encoder level k − 1 (level 1: ``widths[0]``), the layout of
    DRÆM's discriminative sub-network (``anomalib.models.image.draem.torch_model``) with widths
    (w, 2w, 4w, 8w, 8w, 8w). The input side must be divisible by 2^(len(widths) − 1). ``norm="instance"``:
    instance norm in every block (DSR's U-Nets, ``anomalib.models.image.dsr.torch_model.UnetModel``).
    (B, C_in, H, W) -> (B, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, widths: tuple[int, ...], norm: str = "batch"):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least two levels, got widths={widths}")
        self.widths = tuple(widths)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(double_conv(previous, width, norm=norm))
            previous = width
        out_widths = [widths[max(level - 1, 0)] for level in range(len(widths) - 1)]  # decoder level outputs
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            self.up.append(up_conv(previous, out_widths[level], norm=norm))
            self.decoder.append(double_conv(out_widths[level] + widths[level], out_widths[level], norm=norm))
            previous = out_widths[level]
        self.head = nn.Conv2d(previous, out_channels, 3, padding=1)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            raise ValueError(
                f"this U-Net halves its input {len(self.widths) - 1} times: the image side must be "
                f"divisible by {self.divisor}, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)  # (B, widths[level], H/2^level, W/2^level)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)
