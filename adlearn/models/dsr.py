"""DSR — a dual subspace re-projection network for surface anomaly detection
(Zavrtanik, Kristan & Skočaj, ECCV 2022; reference: ``anomalib.models.image.dsr``).

Idea: DRÆM (`adlearn.models.draem`) learns from defects pasted in image space, which look nothing like
real ones. DSR makes its training defects *in a quantised feature space*: an image is encoded into
codes of a codebook learnt on natural images, and a defect is a patch of codes swapped for other,
plausible-but-wrong codes. Two decoders then read the codes: a *general* one that reproduces whatever
the codes say (defect included), and an *object-specific* one that first re-projects the codes onto
the subspace of normal appearance. Where the two images disagree is the anomaly.

The modules, in the order of the paper (Sec. 3, Fig. 2):

1. General object appearance (Sec. 3.1; `adlearn.models.dsr_vq`, pretrained in
   `adlearn.models.dsr_vq_training`): a two-level VQ-VAE — F_hi at 1/4 and F_lo at 1/8 of the image,
   quantised to Q_hi, Q_lo with two EMA codebooks (decay 0.99, commitment 0.25) — and its general
   decoder I_gen = D_gen(Q_lo, Q_hi). Trained first on natural images only (phase 1), then frozen: it
   must stay *general*, able to draw a defect as well as the object (the paper's ImageNet model; the
   reference loads it and never trains it).
2. Quantised-feature anomalies (Sec. 3.4; `adlearn.models.dsr_anomalies`): a Perlin mask M
   (`DsrAnomalyGenerator`), max-pooled to the latent grid; inside it every code is replaced by a random
   one among its near neighbours — drawn from the nearest ⌊s·K⌋ + 1 codes to the unquantised feature,
   skipping the nearest 5 %, with the strength s ~ U(0.2, 1) per image (`swap_codes`). Per image: both
   levels (½: Q̃_lo, then the fine codes that Q̃_lo gives, swapped), only Q_lo (¼) or only Q_hi (¼), the
   other level keeping the normal codes (`quantized_anomalies`).
3. Object-specific decoder (Sec. 3.2): the subspace restriction modules (a U-Net-like network per
   level, `SubspaceRestriction`) map the anomalous Q̃ to normal-looking features F̂, which are
   quantised again (Q̂) and decoded into I_spc = D_spc(up(Q̂_lo), Q̂_hi) (`ObjectSpecificDecoder`).
4. Anomaly detection module (Sec. 3.3): a U-Net on [I_spc, I_gen] (6 channels) → 2-class logits M_o.
   Phase-2 loss (Eq. 4, the reference's weights): L = ‖F̂_hi − Q_hi‖² + ‖F̂_lo − Q_lo‖² + 10·‖I − I_spc‖²
   + FL(M_o, M) (`dsr_loss`), with Q the codes of the *normal* image and FL the focal loss.
5. Upsampling module (Sec. 3.5): a U-Net on [I_spc, I_gen, softmax(M_o)] (8 channels) → refined logits,
   trained (phase 3) with the focal loss on image-space "smudges" (DRÆM's Perlin anomalies with Perlin
   texture, `adlearn.data.PerlinAnomalyGenerator`), everything else frozen.
6. Scores (the reference's inference): anomaly map = softmax of the upsampling module, anomalous
   class (`dsr_anomaly_map`); image score = max of the detection module's anomalous map averaged over
   ``score_window`` × ``score_window`` windows (21 at 256 px).

Training: ``fit`` first gets the phase-1 model (`prepare_vq`: pretrained on natural crops on the shared
loop and cached, or a file), then runs phases of the shared loop (`training_phases`), each with its own
step: "restriction" (`restriction_step`: modules of steps 3–4, Adam lr 2e-4, learning rate ×0.1 after
80 % of the phase) and "upsampling" (`upsampling_step`: step 5, Adam lr 2e-4); the VQ model is frozen in
both. An option outside the paper, off by default: ``vq_finetune_epochs`` > 0 first fine-tunes the VQ
model on the category's normal images mixed with ``natural_share`` as many natural crops (phase
"vq_finetune", `vq_finetune_step`), then freezes it. ``max_epochs`` counts phases 2 + 3 as the reference
does (700 by default): the first ``upsampling_train_ratio`` (0.7) of them are phase 2, the rest phase 3
— the reference code's meaning (its documentation calls the ratio the upsampling share).

Defaults (the reference): 128 hidden channels, 2 residual layers of 64, 4096 codes of dimension 128,
detection and upsampling U-Net width 64, latent anomaly strength 0.2, batch 8, images in [0, 1] (no
ImageNet normalisation: our datasets' normalisation is undone first).

Deliberate differences: (a) phase 1 is trained here, offline, on the photographs the installed wheels
ship (`adlearn.models.dsr_vq_training`; the paper uses ImageNet; ``vq_weights=PATH`` loads the official file);
(b) the focal losses take logits (the reference passes softmax probabilities to kornia's focal loss,
which applies a second softmax); (c) the phase-2 learning-rate step is applied (the reference builds the
StepLR but, with manual optimisation, never steps it); (d) the U-Nets are the shared
`adlearn.components.UNet` with instance norm (encoder widths w, 2w, 4w, 4w as the reference; decoder
widths of the shared layout); (e) the object decoder's bottleneck has ``num_hiddens // 2`` channels (64
at the defaults, the reference's fixed 64); (f) ``score_window`` follows the image size at 21·H/256
(odd), 21 at 256 px; (g) an image picked to be anomalous always gets a non-empty mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import UNet, double_conv, focal_loss, up_conv
from adlearn.data.transforms import denormalize
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.dsr_anomalies import DsrAnomalyGenerator, quantized_anomalies
from adlearn.models.dsr_vq import GeneralAppearanceModel, ResidualStack, load_vq_weights
from adlearn.models.dsr_vq_training import train_vq_model


# ----------------------------------------------------------------------------- step 3: object-specific decoder
class SubspaceRestriction(nn.Module):
    """Q̃ (B, D, h, w) -> F̂ (B, D, h, w): encoder of 3 levels (w, 2w, 4w), decoder from the deepest only (no
    skips, so a defect cannot leak through), instance norm. h, w divisible by 4."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.encoder = nn.ModuleList(
            [
                double_conv(channels, width, norm="instance"),
                double_conv(width, 2 * width, norm="instance"),
                double_conv(2 * width, 4 * width, norm="instance"),
            ]
        )
        self.decoder = nn.Sequential(
            up_conv(4 * width, 2 * width, norm="instance"),
            double_conv(2 * width, 2 * width, norm="instance"),
            up_conv(2 * width, width, norm="instance"),
            double_conv(width, width, norm="instance"),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
        return self.decoder(x)


class ObjectSpecificDecoder(nn.Module):
    """D_spc: [up(Q̂_lo), Q̂_hi] (B, 2D, H/4, W/4) -> I_spc (B, 3, H, W). Two conv levels (2D → 4D → 8D channels,
    pooled to H/16), a 1×1 bottleneck, two ×2 transposed convolutions back to H/4, then the general
    decoder's layout (3×3 conv, residual stack, two ×2 transposed convolutions)."""

    def __init__(self, in_channels: int, hiddens: int, residual_layers: int, residual_hiddens: int):
        super().__init__()
        c, bottleneck = in_channels, hiddens // 2
        self.encoder = nn.Sequential(
            double_conv(c, 2 * c, c, norm="instance"),
            nn.MaxPool2d(2),
            double_conv(2 * c, 4 * c, 2 * c, norm="instance"),
            nn.MaxPool2d(2),
            nn.Conv2d(4 * c, bottleneck, 1),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(bottleneck, bottleneck, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(bottleneck, bottleneck, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(bottleneck, hiddens, 3, padding=1),
        )
        self.residual = ResidualStack(hiddens, residual_layers, residual_hiddens)
        self.head = nn.Sequential(
            nn.ConvTranspose2d(hiddens, hiddens // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hiddens // 2, 3, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.residual(self.up(self.encoder(x))))


# ----------------------------------------------------------------------------- the formulas
def dsr_loss(
    features_hi: torch.Tensor,
    features_lo: torch.Tensor,
    normal_hi: torch.Tensor,
    normal_lo: torch.Tensor,
    image: torch.Tensor,
    object_image: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Phase-2 loss (step 4): {"features_hi", "features_lo", "image" (×10 in the total), "focal", "loss"}."""
    losses = {
        "features_hi": F.mse_loss(features_hi, normal_hi),
        "features_lo": F.mse_loss(features_lo, normal_lo),
        "image": F.mse_loss(object_image, image),
        "focal": focal_loss(logits, mask),
    }
    losses["loss"] = losses["features_hi"] + losses["features_lo"] + 10 * losses["image"] + losses["focal"]
    return losses


def dsr_anomaly_map(logits: torch.Tensor) -> torch.Tensor:
    """Step 6: softmax probability of the anomalous class. (B, 2, H, W) -> (B, H, W)"""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def dsr_image_score(detection_logits: torch.Tensor, window: int) -> torch.Tensor:
    """Step 6: max over the image of the detection module's anomalous map averaged in window × window. -> (B,)"""
    smoothed = F.avg_pool2d(dsr_anomaly_map(detection_logits)[:, None], window, stride=1, padding=window // 2)
    return smoothed.flatten(1).amax(1)


# ----------------------------------------------------------------------------- the model
class Dsr(TrainedModel):
    name = "dsr"
    training_defaults = {"max_epochs": 700}
    # cpu (docs/log/2026-12-06-benchmarks-history.md, "DSR on the real bottle"): 128 px, narrow networks, small codebooks, and
    # lr 1e-3 for phases 2-3 (the paper's 2e-4 leaves them far from converged in 20 epochs).
    # The VQ model: the paper (Zavrtanik et al., ECCV 2022, Sec. 3) pretrains it on natural images only and
    # keeps it frozen, as anomalib.models.image.dsr does with its downloaded weights; "paper" does the same.
    # The cpu preset fine-tunes it 3 epochs on the category (vq_finetune_epochs=3) because that measured
    # better on the real bottle (seed 0): image / pixel AUROC 0.957 / 0.817 against 0.948 / 0.812 frozen
    # (AUPRO 0.665 against 0.676: one seed, small differences).
    presets = {
        "cpu": {
            "image_size": 128,
            "num_hiddens": 64,
            "num_residual_hiddens": 32,
            "num_embeddings": 512,
            "embedding_dim": 32,
            "detection_width": 16,
            "upsampling_width": 16,
            "vq_steps": 600,
            "vq_finetune_epochs": 3,
            "max_epochs": 20,
            "lr": 1e-3,
        }
    }

    def __init__(
        self,
        num_hiddens: int = 128,
        num_residual_layers: int = 2,
        num_residual_hiddens: int = 64,
        num_embeddings: int = 4096,
        embedding_dim: int = 128,
        detection_width: int = 64,
        upsampling_width: int = 64,
        latent_anomaly_strength: float = 0.2,
        upsampling_train_ratio: float = 0.7,
        p_anomalous: float = 0.5,
        lr: float = 2e-4,
        vq_weights: str = "auto",
        vq_steps: int = 2000,
        vq_lr: float = 1e-3,
        vq_finetune_epochs: int = 0,
        natural_share: float = 0.5,
        score_window: int | None = None,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
        **training,
    ):
        from adlearn.data import PerlinAnomalyGenerator

        if "vq_epochs" in training:  # a file saved before the option's rename: the same meaning
            vq_finetune_epochs = training.pop("vq_epochs") or 0
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        height, width = self.input_size
        if height % 32 or width % 32:
            raise ValueError(
                f"DSR encodes at 1/8 of the image and its subspace restriction halves that twice: the "
                f"image side must be divisible by 32, got {height}x{width}. "
                "Use e.g. image_size=256 (or 128)"
            )
        if not 0 < upsampling_train_ratio < 1:
            raise ValueError(
                f"upsampling_train_ratio is the share of max_epochs spent in phase 2 (before the "
                f"upsampling module); it must be in (0, 1), got {upsampling_train_ratio}"
            )
        if not 0 <= latent_anomaly_strength <= 1:
            raise ValueError(f"latent_anomaly_strength must be in [0, 1], got {latent_anomaly_strength}")
        if not 0 <= natural_share <= 1:
            raise ValueError(
                f"natural_share (natural crops per category image when fine-tuning the VQ model) must be in "
                f"[0, 1], got {natural_share}"
            )
        if not (isinstance(vq_finetune_epochs, int) and vq_finetune_epochs >= 0):
            raise ValueError(
                f"vq_finetune_epochs must be an int >= 0 (0: the paper's frozen VQ model), got {vq_finetune_epochs!r}"
            )
        if not (isinstance(vq_weights, str) and vq_weights):
            raise ValueError(f"vq_weights must be 'auto', 'none' or a file path, got {vq_weights!r}")
        self.lr, self.vq_lr, self.min_strength = lr, vq_lr, latent_anomaly_strength
        self.score_window = score_window or (round(21 * height / 256) // 2 * 2 + 1)
        d = embedding_dim
        self.vq = GeneralAppearanceModel(num_hiddens, num_residual_layers, num_residual_hiddens, num_embeddings, d)
        self.restriction_hi = SubspaceRestriction(d, d)
        self.restriction_lo = SubspaceRestriction(d, d)
        self.object_decoder = ObjectSpecificDecoder(2 * d, num_hiddens, num_residual_layers, num_residual_hiddens)
        self.detection = UNet(6, 2, tuple(detection_width * k for k in (1, 2, 4, 4)), norm="instance")
        self.upsampling = UNet(8, 2, tuple(upsampling_width * k for k in (1, 2, 4, 4)), norm="instance")
        self.mask_generator = DsrAnomalyGenerator(p_anomalous, seed)
        self.smudges = PerlinAnomalyGenerator(None, p_anomalous=p_anomalous, beta=(0.2, 1.0), seed=seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.natural = None  # natural crops for the optional VQ fine-tuning, made in `on_fit_start`

    # --- training: the phases, each with its own step
    def training_phases(self):
        from adlearn.train import Phase

        epochs = self.train_config.max_epochs
        if epochs is None or epochs < 2:
            raise ValueError(
                f"DSR trains two phases after the VQ model within max_epochs: give max_epochs >= 2, got {epochs}"
            )
        second = min(max(1, round(epochs * self.config["upsampling_train_ratio"])), epochs - 1)
        finetune = self.config["vq_finetune_epochs"]
        restriction = [self.restriction_hi, self.restriction_lo, self.object_decoder, self.detection]
        phases = [Phase("vq_finetune", self.vq_optimizer, [self.vq], finetune, step=self.vq_finetune_step)]
        return phases[: 1 if finetune else 0] + [
            Phase(
                "restriction",
                lambda: self.restriction_optimizer(second),
                restriction,
                second,
                step=self.restriction_step,
            ),
            Phase(
                "upsampling", self.upsampling_optimizer, [self.upsampling], epochs - second, step=self.upsampling_step
            ),
        ]

    def vq_optimizer(self):
        return torch.optim.Adam(self.vq.parameters(), lr=self.vq_lr)

    def restriction_optimizer(self, epochs: int):
        modules = (self.restriction_hi, self.restriction_lo, self.object_decoder, self.detection)
        optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=self.lr)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, max(1, int(0.8 * epochs)), gamma=0.1)

    def upsampling_optimizer(self):
        return torch.optim.Adam(self.upsampling.parameters(), lr=self.lr)

    def on_fit_start(self, data, trainer) -> None:
        """The phase-1 weights (`prepare_vq`), the natural crops the optional VQ fine-tuning mixes in,
        and seeded random streams."""
        from adlearn.data.natural_images import NaturalImageCrops

        self.prepare_vq()
        mixes = self.config["vq_finetune_epochs"] > 0 and self.config["natural_share"] > 0
        self.natural = NaturalImageCrops(self.input_size, seed=self.seed, normalize=False) if mixes else None
        self.mask_generator.reseed(self.seed)
        self.smudges.rng = np.random.default_rng(self.seed + 1)
        self.generator.manual_seed(self.seed)

    def prepare_vq(self) -> None:
        """Phase 1: ``vq_weights="auto"`` pretrains the VQ model on natural crops only, once (`train_vq_model`
        on the shared loop, cached), a path loads a file (`load_vq_weights`), "none" keeps random weights."""
        weights = self.config["vq_weights"]
        if weights == "auto":
            path = train_vq_model(
                self.input_size,
                self.config["num_hiddens"],
                self.config["num_residual_layers"],
                self.config["num_residual_hiddens"],
                self.config["num_embeddings"],
                self.config["embedding_dim"],
                steps=self.config["vq_steps"],
                lr=self.vq_lr,
                seed=self.seed,
                device=self.device,
            )
            load_vq_weights(self.vq, path)
        elif weights != "none":
            load_vq_weights(self.vq, weights)
        self.vq.to(self.device)

    def vq_finetune_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        """The optional phase "vq_finetune" (not the paper's): the VQ loss on the category's normal images
        plus ``natural_share`` as many natural crops."""
        images = denormalize(batch["image"])  # (B, 3, H, W) in [0, 1]
        if self.natural is not None:
            count = max(1, int(len(images) * self.config["natural_share"]))
            images = torch.cat([images, self.natural.sample(count).to(images)])
        return self.vq.training_loss(images)

    def restriction_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        """Phase 2 (steps 2–4): `restriction_loss` of the batch."""
        return self.restriction_loss(denormalize(batch["image"]))

    def upsampling_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        """Phase 3 (step 5): the focal loss of the upsampling module on image-space smudges."""
        augmented, mask = self.smudges(denormalize(batch["image"]), normalized=False)
        loss = focal_loss(self.forward_networks(augmented)["upsampled"], mask)
        return {"focal_upsampling": loss, "loss": loss}

    def restriction_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Phase 2 on images in [0, 1]: steps 2–4 and `dsr_loss`."""
        mask = self.mask_generator.augment_batch(images)
        with torch.no_grad():
            features = self.vq.encode(images)
            anomalous = quantized_anomalies(self.vq, features, mask, self.min_strength, self.generator)
            general = self.vq.decode(anomalous["quantized_lo"], anomalous["quantized_hi"])
        restored = self.restore(anomalous["quantized_lo"], anomalous["quantized_hi"])
        object_image = self.object_decoder(
            torch.cat([self.vq.upsample_lo(restored["quantized_lo"]), restored["quantized_hi"]], dim=1)
        )
        logits = self.detection(torch.cat([object_image.detach(), general], dim=1))
        return dsr_loss(
            restored["features_hi"],
            restored["features_lo"],
            features["quantized_hi"],
            features["quantized_lo"],
            images,
            object_image,
            logits,
            anomalous["mask"],
        )

    # --- the steps at inference
    def restore(self, quantized_lo: torch.Tensor, quantized_hi: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step 3: F̂ = restriction(Q̃) and Q̂ = VQ(F̂) (straight-through) for both levels."""
        features_lo = self.restriction_lo(quantized_lo)
        features_hi = self.restriction_hi(quantized_hi)
        return {
            "features_lo": features_lo,
            "features_hi": features_hi,
            "quantized_lo": self.vq.quantizer_lo(features_lo)[0],
            "quantized_hi": self.vq.quantizer_hi(features_hi)[0],
        }

    def forward_networks(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Steps 1, 3–5 on images in [0, 1]: {"general": I_gen, "object": I_spc (B, 3, H, W), "detection",
        "upsampled": logits (B, 2, H, W)}; only the upsampling module keeps gradients."""
        with torch.no_grad():
            features = self.vq.encode(images)
            general = self.vq.decode(features["quantized_lo"], features["quantized_hi"])
            restored = self.restore(features["quantized_lo"], features["quantized_hi"])
            object_image = self.object_decoder(
                torch.cat([self.vq.upsample_lo(restored["quantized_lo"]), restored["quantized_hi"]], dim=1)
            )
            detection = self.detection(torch.cat([object_image, general], dim=1))
        upsampled = self.upsampling(torch.cat([object_image, general, torch.softmax(detection, dim=1)], dim=1))
        return {"general": general, "object": object_image, "detection": detection, "upsampled": upsampled}

    def extract_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`forward_networks` of ImageNet-normalised images (as the datasets give them)."""
        return self.forward_networks(denormalize(images))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return dsr_anomaly_map(self.extract_features(images)["upsampled"])  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        outputs = self.extract_features(images)
        return Prediction(
            pred_score=dsr_image_score(outputs["detection"], self.score_window),
            anomaly_map=dsr_anomaly_map(outputs["upsampled"]),
        )
