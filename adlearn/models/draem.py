"""DRÆM — a discriminatively trained reconstruction embedding for surface anomaly detection
(Zavrtanik, Kristan & Skočaj, ICCV 2021, arXiv:2108.07610).

Idea: a reconstruction model alone scores defects by how badly it rebuilds them, and a good
reconstruction network rebuilds defects too. DRÆM *trains a second network to find* the
difference. It never sees a real defect: every training image gets, half of the time, a simulated
one — a Perlin-noise blob filled with a foreign texture — and the model learns (a) to rebuild the
clean image from the defective one and (b) to segment where the input and its reconstruction
disagree. At test time that segmentation is the anomaly map.

The steps, in the order of the paper (Sec. 3, Fig. 3):

1. Simulate anomalies (Sec. 3.3; `adlearn.data.PerlinAnomalyGenerator`): a mask M from thresholded,
   rotated Perlin noise; a texture A (a foreign image, or the noise itself), randomly augmented; an
   opacity β ~ U(0.1, 1):

       I_a = (1 − M) ⊙ I + (1 − β) (M ⊙ I) + β (M ⊙ A)

   in [0, 1] image space; the images are ImageNet-normalised only afterwards, for the networks.
2. Reconstructive sub-network (Sec. 3.1): an encoder–decoder (5 levels of two 3×3 conv-BN-ReLU,
   widths w, 2w, 4w, 8w, 8w with w = 128, max-pooling between them; the decoder mirrors it with
   bilinear upsampling, no skip connections) rebuilds I_r from I_a.
3. Loss of the reconstruction (Eq. 1–2): L_rec = ‖I − I_r‖² + λ·(1 − SSIM(I, I_r)), λ = 1 as the
   reference implements it (twice kornia's (1 − SSIM)/2), in [0, 1] space.
4. Discriminative sub-network (Sec. 3.2): a U-Net (6 levels, widths w, 2w, 4w, 8w, 8w, 8w with
   w = 64, skip connections) on the channel-wise concatenation [I_r, I_a] (6 channels) outputs
   2-class logits; M_o = softmax(logits)[anomalous].
5. Loss of the segmentation (Eq. 3): the focal loss L_seg = FL(M_o, M) (α = 1, γ = 2). In total
   L = L_rec + L_seg, minimised by one Adam (lr 1e-4; torch's fused implementation).
6. Anomaly map: M_o at test time (on the test image, no simulation); image score: its maximum.

Optional SSPCAB (Ristea et al., CVPR 2022; `adlearn.components.SSPCAB`): replaces the encoder's last
block; its output is trained towards its input with λ_s·MSE (λ_s = 0.1).

Defaults (the reference implementation, ``anomalib.models.image.draem``): w = 128 and 64, β ∈ (0.1, 1),
half of the images made anomalous, Adam lr 1e-4, 700 epochs with the learning rate divided by 10
after epochs 400 and 600 (here at the same fractions, 4/7 and 6/7, of ``max_epochs``), batch size 8.
The reference's textures are DTD's: its ``Draem(dtd_dir=...)`` downloads the dataset into
``./datasets/dtd`` when that folder is missing. Here nothing is downloaded: the default is no folder.

Anomaly sources (``anomaly_source``): ``None`` — the Perlin noise itself, coloured (what the reference's
generator, ``anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator``, does when it is given no
folder; the reference's DRÆM always gives it DTD's); ``"skimage"`` — the photos and textures scikit-image ships (brick,
grass, gravel, ...: `adlearn.data.skimage_textures`); or a folder of images (e.g. DTD, the paper's
choice: ``data_scripts/download_dtd.py``).

Deliberate differences: (a) the networks see ImageNet-normalised images, as every model of the package
does: the anomalies are made in [0, 1] space and the images normalised after; the losses compare I and
I_r in [0, 1] space (the networks' output is un-normalised, an affine map). The reference feeds [0, 1]
images to its networks and refuses normalised ones: its pre-processor only resizes, and
``Draem.on_train_start`` (``anomalib.models.image.draem.lightning_model``) raises when the transform
holds a ``Normalize``. (b) the
image score is the map's maximum, as anomalib (the paper's code takes the maximum of a 21×21
average-pooled map). (c) The learning-rate milestones follow ``max_epochs`` (fractions of the
reference's 700). (d) Early stopping only on validation data given or held out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import SSPCAB, UNet, double_conv, focal_loss, ssim_loss, up_conv
from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from adlearn.models.base import TrainedModel
from adlearn.models.common import prediction_from_map


# ----------------------------------------------------------------------------- step 2
class ReconstructiveSubNetwork(nn.Module):
    """I_a (B, 3, H, W) -> I_r (B, 3, H, W): an encoder–decoder without skip connections (H divisible by 16)."""

    def __init__(self, base_width: int = 128, sspcab: bool = False):
        super().__init__()
        w = base_width
        widths = (w, 2 * w, 4 * w, 8 * w)
        self.encoder = nn.ModuleList(
            [double_conv(3, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w), double_conv(4 * w, 8 * w)]
        )
        self.bottom = SSPCAB(8 * w) if sspcab else double_conv(8 * w, 8 * w)  # the 5th level, H/16
        self.up = nn.ModuleList([up_conv(c, c) for c in reversed(widths)])  # 8w, 4w, 2w, w
        self.decoder = nn.ModuleList(
            [
                double_conv(8 * w, 4 * w, 8 * w),
                double_conv(4 * w, 2 * w, 4 * w),
                double_conv(2 * w, w, 2 * w),
                double_conv(w, w),
            ]
        )
        self.head = nn.Conv2d(w, 3, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of the bottom block (B, 8w, H/16, W/16), its output) — the SSPCAB loss compares them."""
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
        x = F.max_pool2d(x, 2)
        return x, self.bottom(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[1])

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        for up, block in zip(self.up, self.decoder):
            x = block(up(x))
        return self.head(x)


# ----------------------------------------------------------------------------- steps 3 and 5
def reconstruction_loss(original: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 3, in [0, 1] space: {"l2": mean squared error, "ssim": 1 − SSIM (window 11)}."""
    return {"l2": F.mse_loss(reconstruction, original), "ssim": ssim_loss(reconstruction, original)}


def draem_loss(
    original: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Steps 3 + 5: {"l2", "ssim", "focal", "loss" = l2 + ssim + focal}. Images (B, 3, H, W) in [0, 1],
    mask (B, 1, H, W) 0/1, logits (B, 2, H, W)."""
    losses = reconstruction_loss(original, reconstruction)
    losses["focal"] = focal_loss(logits, mask)
    losses["loss"] = losses["l2"] + losses["ssim"] + losses["focal"]
    return losses


def draem_anomaly_map(logits: torch.Tensor) -> torch.Tensor:
    """Step 6: softmax probability of the anomalous class. (B, 2, H, W) -> (B, H, W)"""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def to_unit_range(normalized: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised -> [0, 1] space, without clamping (an affine map: gradients pass)."""
    mean = torch.tensor(IMAGENET_MEAN, device=normalized.device, dtype=normalized.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=normalized.device, dtype=normalized.dtype).view(1, 3, 1, 1)
    return normalized * std + mean


def resolve_anomaly_source(anomaly_source: str | Path | None) -> Path | None:
    """None / "perlin" -> None (Perlin textures); "skimage" -> scikit-image's photos; else a folder."""
    if anomaly_source is None or anomaly_source == "perlin":
        return None
    if anomaly_source == "skimage":
        from adlearn.data import skimage_textures

        return skimage_textures()
    return Path(anomaly_source).expanduser()


# ----------------------------------------------------------------------------- the model
class Draem(TrainedModel):
    name = "draem"
    # The reference's training: 700 epochs, early stopping patience 20 (with validation data).
    training_defaults = {"max_epochs": 700, "patience": 20}
    # cpu: a training step of 8 images at 128 px costs ~4.4 CPU s with widths 32/16 (one thread), so the
    # recipe uses 16/8 to fit ~50 epochs of the bottle's 209 images in about half an hour on 2 cores.
    presets = {
        "cpu": {
            "image_size": 128,
            "reconstruction_width": 16,
            "discrimination_width": 8,
            "anomaly_source": "skimage",
            "max_epochs": 50,
        }
    }

    def __init__(
        self,
        reconstruction_width: int = 128,
        discrimination_width: int = 64,
        sspcab: bool = False,
        sspcab_lambda: float = 0.1,
        anomaly_source: str | None = None,
        beta: float | tuple = (0.1, 1.0),
        p_anomalous: float = 0.5,
        lr: float = 1e-4,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
        **training,
    ):
        from adlearn.data import PerlinAnomalyGenerator

        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        if any(side % 32 for side in self.input_size):
            raise ValueError(
                f"DRAEM's discriminative U-Net halves the image 5 times: the image side must be divisible "
                f"by 32, got {self.input_size[0]}x{self.input_size[1]}. Use e.g. image_size=256 (or 128)"
            )
        self.sspcab_lambda, self.lr = sspcab_lambda, lr
        self.texture_folder = resolve_anomaly_source(anomaly_source)
        # Checked now (a folder without images is an error here, not at the first batch); re-seeded in fit.
        self.augmenter = PerlinAnomalyGenerator(self.texture_folder, p_anomalous=p_anomalous, beta=beta, seed=seed)
        self.reconstructive = ReconstructiveSubNetwork(reconstruction_width, sspcab)
        self.discriminative = UNet(6, 2, tuple(discrimination_width * k for k in (1, 2, 4, 8, 8, 8)))

    # --- training
    def configure_optimizers(self):
        # fused: one kernel updates all parameters (97M at the paper's widths) — the same Adam update up to
        # rounding, ~0.5 CPU-s less per step than the per-tensor-list ("foreach") default.
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, fused=True)
        epochs = self.train_config.max_epochs
        if epochs is None:
            return optimizer, None
        milestones = sorted({max(1, round(epochs * 4 / 7)), max(1, round(epochs * 6 / 7))})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    def on_fit_start(self, data, trainer) -> None:
        self.augmenter.rng = np.random.default_rng(self.seed)  # same seed, same anomalies

    def simulate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 1: (original in [0, 1], augmented in [0, 1], mask (B, 1, H, W)) of normalised images."""
        original = denormalize(images)  # (B, 3, H, W) in [0, 1]
        augmented, mask = self.augmenter(original, normalized=False)
        return original, augmented, mask

    def forward_networks(self, augmented: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 2 and 4 on [0, 1] images: (I_r in [0, 1] space, logits (B, 2, H, W), SSPCAB's MSE or 0)."""
        x = normalize(augmented)  # the networks see normalised images
        before, after = self.reconstructive.encode(x)
        reconstruction = self.reconstructive.decode(after)  # (B, 3, H, W), normalised space
        logits = self.discriminative(torch.cat([reconstruction, x], dim=1))
        sspcab = F.mse_loss(after, before) if self.config["sspcab"] else reconstruction.new_zeros(())
        return to_unit_range(reconstruction), logits, sspcab

    def training_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        original, augmented, mask = self.simulate(batch["image"])
        reconstruction, logits, sspcab = self.forward_networks(augmented)
        losses = draem_loss(original, reconstruction.float(), mask, logits)
        if self.config["sspcab"]:
            losses["sspcab"] = sspcab
            losses["loss"] = losses["loss"] + self.sspcab_lambda * sspcab
        return losses

    # --- prediction
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2 and 4 on test images (no simulation): (I_r in [0, 1] space, logits (B, 2, H, W))."""
        reconstruction, logits, _ = self.forward_networks(denormalize(images))
        return reconstruction, logits

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return draem_anomaly_map(self.extract_features(images)[1])  # (B, H, W)

    def predict_step(self, images: torch.Tensor):
        return prediction_from_map(self.anomaly_map(images))  # image score = max
