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
steps of 8 crops), mean squared error, on ``crop_size`` crops (the PDN is fully convolutional and its
33 × 33 receptive field is far below the crop: weights learnt on 128-px crops serve any image size).

It trains on the shared loop (`adlearn.train.Trainer`, through `TeacherDistillation`): a progress bar, one
line per epoch of a tenth of the steps with the error on held-out crops (another seed's views, not the
training stream's), optional early stopping (``patience``: then the best epoch's weights are kept) and checkpoints
(``checkpoint_path``). The result is cached per PDN size and recipe in ``$ADLEARN_CACHE/efficient_ad/``
(default ``~/.cache/adlearn``) as a plain PDN state dict: the code ships, the weights are made once per
machine.

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from adlearn.cache import cache_dir
from adlearn.components import TimmFeatureExtractor
from adlearn.components.pdn import PDN_BORDER, PatchDescriptionNetwork
from adlearn.data.natural_images import NaturalImageCrops
from adlearn.models.common import save_cached_weights
from adlearn.utils import seeded

DISTILLATION_LAYERS = ("layer2", "layer3")  # strides 8 and 16, as PatchCore's features
LR_SCHEDULES = ("cosine", "constant")
HELD_OUT_SEED = 1000  # the held-out crops' stream: seed + 1000, never the training stream's seed


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
        features = features[..., PDN_BORDER : size // 4 - PDN_BORDER, PDN_BORDER : size // 4 - PDN_BORDER]
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
    patience: int | None = None,
) -> Path:
    schedule = "" if lr_schedule == "constant" else f"_{lr_schedule}"
    stopping = "" if patience is None else f"_patience{patience}"
    return (
        cache_dir() / "efficient_ad" / f"teacher_{model_size}_{backbone}_{out_channels}ch_{steps}steps{schedule}_"
        f"{crop_size}px_seed{seed}{stopping}.pt"
    )


def default_teacher_path(model_size: str = "small") -> Path:
    """Where `distill_teacher` with its defaults caches the teacher (what ``teacher_weights="auto"`` loads)."""
    defaults = {k: p.default for k, p in inspect.signature(distill_teacher).parameters.items()}
    keys = ("backbone", "out_channels", "steps", "crop_size", "seed", "lr_schedule", "patience")
    return teacher_cache_path(model_size, *(defaults[key] for key in keys))


def distillation_error(teacher: PatchDescriptionNetwork, target: DistillationTarget, crops: torch.Tensor) -> float:
    """Mean squared error between the PDN's output and the (normalised) target on ``crops``."""
    with torch.no_grad():
        return float((teacher(crops) - target(crops)).pow(2).mean())


def statistics_crops(batch_size: int) -> int:
    """How many crops the target's channel statistics use (the training stream then skips as many)."""
    return max(32, 4 * batch_size)


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
    target.fit_statistics(crops.sample(statistics_crops(batch_size)).to(device))
    return target


class CropStream(IterableDataset):
    """``length`` crops per pass (one epoch) from a `NaturalImageCrops` stream that goes on where the last
    pass stopped: an endless supply of training views, in epochs the loop can count."""

    def __init__(self, crops: NaturalImageCrops, length: int):
        self.crops, self.length = crops, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            yield {"image": self.crops.sample(1)[0]}  # (3, s, s)


class TeacherDistillation(nn.Module):
    """The distillation as a network the shared loop trains: the PDN (``teacher``) regresses the frozen
    ``target`` with a mean squared error; Adam on the PDN, its learning rate decayed per step.

    It follows `adlearn.models.TrainedModel`'s training protocol (``configure_optimizers``,
    ``training_step``, ``validation_step``, ``save``) without being an anomaly model: it has no scores.
    Build it inside a seeded block: the PDN's initialisation draws from torch's global generator.
    """

    name = "efficient_ad teacher"
    automatic_optimization = True
    scheduler_interval = "step"  # the learning-rate schedule counts optimizer steps

    def __init__(
        self,
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
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if crop_size % 4 or crop_size < 64:
            raise ValueError(
                f"crop_size must be a multiple of 4 and at least 64 (the PDN's output is s/4 − 8), got {crop_size}"
            )
        self.device, self.seed, self.batch_size = torch.device(device), seed, batch_size
        self.steps, self.lr, self.lr_schedule, self.crop_size = steps, lr, lr_schedule, crop_size
        self.teacher = PatchDescriptionNetwork(out_channels, model_size).to(self.device)
        self.target = distillation_target(backbone, out_channels, crop_size, seed, batch_size, self.device)

    def decay(self, step: int) -> float:
        """The learning rate's factor after ``step`` updates: half a cosine from 1 to 0, or 1."""
        return 0.5 * (1.0 + math.cos(math.pi * step / self.steps)) if self.lr_schedule == "cosine" else 1.0

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.teacher.parameters(), lr=self.lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.decay)

    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        crops = batch["image"]  # (B, 3, s, s)
        return (self.teacher(crops) - self.target(crops)).pow(2).mean()

    def validation_step(self, batch: dict) -> torch.Tensor:
        """The error on held-out crops, whose targets were computed once (``held_out_crops``)."""
        return (self.teacher(batch["image"]) - batch["target"]).pow(2).mean()

    def training_crops(self) -> DataLoader:
        """Epochs of a tenth of the steps (at least one step each) from the seeded crop stream, after the
        views the target's statistics used."""
        crops = NaturalImageCrops(self.crop_size, seed=self.seed)
        crops.sample(statistics_crops(self.batch_size))  # the statistics' views: train on new ones
        per_epoch = max(1, self.steps // 10) * self.batch_size
        return DataLoader(CropStream(crops, per_epoch), batch_size=self.batch_size)

    @torch.no_grad()
    def held_out_crops(self) -> list[dict]:
        """Validation items {"image", "target"}: crops of another seed's stream, with their targets."""
        crops = NaturalImageCrops(self.crop_size, seed=self.seed + HELD_OUT_SEED).sample(
            statistics_crops(self.batch_size)
        )
        targets = self.target(crops.to(self.device)).cpu()
        return [{"image": crop, "target": target} for crop, target in zip(crops, targets)]

    def save(self, path: str | Path) -> Path:
        """The PDN's state dict (what ``teacher_weights=PATH`` loads): the loop's checkpoints."""
        save_cached_weights(self.teacher, path)
        return Path(path)


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
    patience: int | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool | str = "auto",
):
    """Distil a PDN teacher (see the module docstring) on the shared training loop; returns the cached
    weights' path.

    ``lr_schedule``: ``"cosine"`` (the learning rate falls from ``lr`` to 0 over the steps, half a cosine)
    or ``"constant"``. ``patience``: stop once that many epochs (a tenth of the steps each) did not lower
    the held-out error, keeping the best epoch's weights (None: all the steps, the last weights).
    ``checkpoint_path``: the PDN's weights after every epoch (never the cache file). ``verbose``: one line
    per epoch; ``progress``: a progress bar per epoch (``"auto"``: in a terminal or notebook).

    ``return_model=True`` also returns ``(teacher, target)`` for inspection (then nothing is read
    from the cache: the PDN is trained).
    """
    from adlearn.train import Trainer, TrainingConfig

    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    path = teacher_cache_path(model_size, backbone, out_channels, steps, crop_size, seed, lr_schedule, patience)
    if cache and path.is_file() and not return_model:
        return path
    with seeded(seed, device):  # the caller's random state untouched, cache or not
        distillation = TeacherDistillation(
            model_size, backbone, out_channels, steps, batch_size, crop_size, lr, seed, lr_schedule, device
        )
        config = TrainingConfig(max_steps=steps, patience=patience, val_metric="loss", amp=False)
        trainer = Trainer(
            distillation,
            config,
            restore_best=patience is not None,
            checkpoint_path=checkpoint_path,
            verbose=verbose,
            progress=progress,
        )
        distillation.history = trainer.fit(distillation.training_crops(), distillation.held_out_crops())
    teacher = distillation.teacher.eval()
    if cache:
        save_cached_weights(teacher, path)
    return (path, teacher, distillation.target) if return_model else path


def load_teacher_weights(teacher: PatchDescriptionNetwork, path: str | Path, model_size: str, channels: int) -> None:
    """A PDN state dict (ours or the reference's ``pretrained_teacher_{small,medium}.pth``) into ``teacher``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientAD: no teacher weights at {path} (teacher_weights= a .pth file, 'auto' "
            "to distil one here, or 'none')"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    expected = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        differences = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found.get(k)]
        raise ValueError(
            f"EfficientAD: {path.name} does not hold a {model_size} PDN with {channels} output channels "
            f"(first difference: {differences[0]!r}, expected {expected.get(differences[0])}, found "
            f"{found.get(differences[0])}); pass model_size= and teacher_out_channels= to match the file"
        )
    teacher.load_state_dict(state)
