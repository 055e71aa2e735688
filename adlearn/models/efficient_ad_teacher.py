"""EfficientAD's teacher, distilled offline: a PDN trained to regress an ImageNet CNN's features.

The paper (Batzner et al., WACV 2024, Sec. 3.1 and appendix) pretrains its patch description
network (PDN) on ImageNet by knowledge distillation from a WideResNet-101: the PDN sees an image,
the WideResNet sees it at twice the resolution, and the PDN's output at stride 4 must match the
WideResNet's PatchCore-style features (layers 2 and 3, 3 × 3 neighbourhood-averaged, projected to
384 channels, each channel normalised) at its stride 8. The reference implementation
(``anomalib.models.image.efficient_ad``) downloads the result.

Here `distill_teacher` does the same with what is offline: the ``efficientnet_lite0/1/2`` weights
(``layer2`` and ``layer3``, strides 8 and 16) and random crops of the photographs the installed
wheels ship (`adlearn.data.NaturalImageCrops`). The concatenated backbone channels (152 for lite0)
are mapped to the PDN's 384 by a fixed random Gaussian matrix (a seeded Johnson–Lindenstrauss
projection: distances between feature vectors are kept up to a small factor) and normalised per
channel with statistics of the crops. Training: Adam (lr 5e-4 falling to 0 along half a cosine over 700
steps of 8 crops), mean squared error, on ``crop_size`` crops
(the PDN is fully convolutional and its 33 × 33 receptive field is far below the crop: weights learnt
on 128-px crops serve any image size).

The result is cached per PDN size and recipe in ``$ADLEARN_CACHE/efficient_ad/`` (default
``~/.cache/adlearn``): the code ships, the weights are made once per machine.

    path = distill_teacher("small")             # trains once (≈ 37 CPU-minutes), then returns the cached file
    model = adlearn.create("efficient_ad", teacher_weights=path)   # "auto" does exactly this

Alignment: an unpadded PDN turns a crop of side s into (s/4 − 8)² features, the one at (i, j)
seeing pixels 4i … 4i + 32; the backbone at 2s gives an s/4 grid at stride 8 (4 crop pixels) whose
position (i + 4, j + 4) is centred 4i + 18 — 2 pixels from the PDN feature's centre 4i + 16. So the
target is the backbone grid with 4 positions cut from every border (the reference pads the maps by 4
for the same reason).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adlearn.components import TimmFeatureExtractor
from adlearn.data.natural_images import NaturalImageCrops
from adlearn.models.common import save_cached_weights
from adlearn.models.efficient_ad import MAP_PADDING, PatchDescriptionNetwork
from adlearn.utils import isolated_seed

DISTILLATION_LAYERS = ("layer2", "layer3")  # strides 8 and 16, as PatchCore's features


class DistillationTarget(torch.nn.Module):
    """What the teacher PDN must output for a crop: (B, 3, s, s) -> (B, out_channels, s/4 − 8, s/4 − 8)."""

    def __init__(
        self, backbone: str = "efficientnet_lite0", out_channels: int = 384, seed: int = 0, pretrained: str = "auto"
    ):
        super().__init__()
        self.extractor = TimmFeatureExtractor(backbone, list(DISTILLATION_LAYERS), pre_trained=pretrained)
        channels = sum(self.extractor.out_dims)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(out_channels, channels, generator=generator) / channels**0.5)
        self.register_buffer("mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, out_channels, 1, 1))

    @torch.no_grad()
    def raw(self, crops: torch.Tensor) -> torch.Tensor:
        """Projected PatchCore-style features before the channel normalisation."""
        size = crops.shape[-1]
        doubled = F.interpolate(crops, scale_factor=2, mode="bilinear", align_corners=False)
        maps = [F.avg_pool2d(m, 3, 1, 1) for m in self.extractor(doubled).values()]  # 3×3 neighbourhoods
        grid = maps[0].shape[-2:]  # (s/4, s/4)
        features = torch.cat(
            [maps[0]] + [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps[1:]], dim=1
        )  # (B, C, s/4, s/4)
        features = features[..., MAP_PADDING : size // 4 - MAP_PADDING, MAP_PADDING : size // 4 - MAP_PADDING]
        return torch.einsum("oc,bchw->bohw", self.projection, features)  # (B, 384, s/4 − 8, ...)

    @torch.no_grad()
    def fit_statistics(self, crops: torch.Tensor) -> None:
        features = self.raw(crops)
        self.mean.copy_(features.mean((0, 2, 3), keepdim=True))
        self.std.copy_(features.std((0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return (self.raw(crops) - self.mean) / self.std


def teacher_cache_path(
    model_size: str,
    backbone: str,
    out_channels: int,
    steps: int,
    crop_size: int,
    seed: int,
    lr_schedule: str = "cosine",
) -> Path:
    from adlearn.cache import cache_dir

    schedule = "" if lr_schedule == "constant" else f"_{lr_schedule}"
    return (
        cache_dir() / "efficient_ad" / f"teacher_{model_size}_{backbone}_{out_channels}ch_{steps}steps{schedule}_"
        f"{crop_size}px_seed{seed}.pt"
    )


def default_teacher_path(model_size: str = "small") -> Path:
    """Where `distill_teacher` with its defaults caches the teacher (what ``teacher_weights="auto"`` loads)."""
    defaults = {k: p.default for k, p in inspect.signature(distill_teacher).parameters.items()}
    return teacher_cache_path(
        model_size,
        defaults["backbone"],
        defaults["out_channels"],
        defaults["steps"],
        defaults["crop_size"],
        defaults["seed"],
        defaults["lr_schedule"],
    )


def distillation_error(teacher: PatchDescriptionNetwork, target: DistillationTarget, crops: torch.Tensor) -> float:
    """Mean squared error between the PDN's output and the (normalised) target on ``crops``."""
    with torch.no_grad():
        return float((teacher(crops) - target(crops)).pow(2).mean())


def distillation_target(
    backbone: str = "efficientnet_lite0",
    out_channels: int = 384,
    crop_size: int = 128,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> DistillationTarget:
    """The target `distill_teacher` regresses, with its channel statistics from the same seeded crops."""
    target = DistillationTarget(backbone, out_channels, seed).to(device)
    crops = NaturalImageCrops(crop_size, seed=seed)
    target.fit_statistics(crops.sample(max(32, 4 * batch_size)).to(device))
    return target


def distill_teacher(
    model_size: str = "small",
    backbone: str = "efficientnet_lite0",
    out_channels: int = 384,
    steps: int = 700,
    batch_size: int = 8,
    crop_size: int = 128,
    lr: float = 5e-4,
    seed: int = 0,
    lr_schedule: str = "cosine",
    device: str | torch.device = "cpu",
    cache: bool = True,
    verbose: bool = True,
    return_model: bool = False,
):
    """Distil a PDN teacher (see the module docstring); returns the cached weights' path.

    ``lr_schedule``: ``"cosine"`` (the learning rate falls from ``lr`` to 0 over the steps, half a cosine)
    or ``"constant"``.

    ``return_model=True`` also returns ``(teacher, target)`` for inspection (then nothing is read
    from the cache: the PDN is trained).
    """
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if crop_size % 4 or crop_size < 64:
        raise ValueError(
            f"crop_size must be a multiple of 4 and at least 64 (the PDN's output is s/4 − 8), got {crop_size}"
        )
    path = teacher_cache_path(model_size, backbone, out_channels, steps, crop_size, seed, lr_schedule)
    if cache and path.is_file() and not return_model:
        return path
    device = torch.device(device)
    with isolated_seed(seed, device):  # the caller's random state untouched, cache or not
        teacher = PatchDescriptionNetwork(out_channels, model_size).to(device)
        target = distillation_target(backbone, out_channels, crop_size, seed, batch_size, device)
        crops = NaturalImageCrops(crop_size, seed=seed)
        crops.sample(max(32, 4 * batch_size))  # the views the statistics used: train on new ones
        optimizer = torch.optim.Adam(teacher.parameters(), lr=lr)

        def decay(step: int) -> float:  # the learning rate's factor after `step` updates
            return 0.5 * (1.0 + math.cos(math.pi * step / steps)) if lr_schedule == "cosine" else 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
        start, log_every = time.perf_counter(), max(1, steps // 10)
        for step in range(1, steps + 1):
            batch = crops.sample(batch_size).to(device)
            loss = (teacher(batch) - target(batch)).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if verbose and (step % log_every == 0 or step == steps):
                print(
                    f"distill_teacher ({model_size}, {backbone}): step {step}/{steps}, loss {loss.item():.4f}, "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    teacher.eval()
    if cache:
        save_cached_weights(teacher, path)
    return (path, teacher, target) if return_model else path
