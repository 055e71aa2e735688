"""Reverse Distillation — anomaly detection via reverse distillation from a one-class embedding
(Deng & Li, CVPR 2022, arXiv:2201.10703). Reference implementation:
``anomalib.models.image.reverse_distillation`` (``torch_model``, ``loss``, ``anomaly_map``,
``components.bottleneck``, ``components.de_resnet``).

Idea: in STFPM the student sees the *image* and copies the teacher's features, so it can also copy
them on a defect it never saw, if the defect resembles something normal. Reverse distillation makes
the student's task harder in a useful way: the student is a **decoder** that sees only a compact
*embedding* of the teacher's features and must rebuild them, scale by scale. The embedding is trained
on normal images only, so it has no words for a defect: the rebuilt features are "what a normal
image would look like here", and they disagree with the teacher's where the image is defective.

The steps, in the order of the paper (Sec. 3):

1. Teacher encoder E (ImageNet weights, frozen, eval mode): ``layer1..layer3`` give e_1, e_2, e_3,
   (B, C_l, h_l, w_l) at strides 4, 8, 16.
2. One-class bottleneck embedding, OCBE (Sec. 3.2). *Multi-scale feature fusion*: e_1 goes through
   two stride-2 3×3 conv+BN+ReLU (C_1 → C_2 → C_3), e_2 through one (C_2 → C_3), both now at e_3's
   stride; the three are concatenated (3·C_3 channels) and *one-class embedding*: one residual
   stage with stride 2 compresses them to φ, (B, 2·C_3, h_3/2, w_3/2). The blocks are
   `adlearn.components.conv_bn_relu` and `adlearn.components.residual_stage`.
3. Student decoder D (Sec. 3.1): a mirrored ResNet ("de-ResNet") whose stages upsample φ with 2×2
   transposed convolutions into d_3, d_2, d_1, shaped exactly like e_3, e_2, e_1.
4. Loss. The paper (Eqs. 1–2) averages the per-position 1 − cos(e_l(h, w), d_l(h, w)) over each map;
   the reference code — and this module — take the cosine of the *flattened* maps instead (RD4AD
   issue #22), summed over the layers:

       L = Σ_l  mean_b [ 1 − cos( vec(e_l[b]), vec(d_l[b]) ) ]

   Adam(lr 0.005, betas (0.5, 0.99)) on the bottleneck and the decoder; the teacher never changes.
5. Anomaly map (Sec. 3.3, Eq. 3): per layer and position M_l = 1 − cos(e_l, d_l) along the channels,
   bilinearly upsampled (align_corners=True) to the image size, **added** over the layers
   (``"multiply"`` is the other mode; `adlearn.models.common.combine_layer_maps`), smoothed with a
   Gaussian blur σ = 4. Image score = the map's maximum.

Defaults (the reference's): backbone ``wide_resnet50_2`` (timm hub weights), layers
``layer1..layer3``, ``anomaly_map_mode="add"`` (the Lightning default; the map generator's own default
is "multiply" — the Lightning value is the one passed through), 200 epochs with early-stopping
patience 3 (used when ``fit`` gets ``val_data``), no gradient clipping. ``efficientnet_lite0``
(packaged offline weights, layers 1–3 = ``blocks.1/2/4``: 24, 40, 112 channels) is what tests and
smoke runs use.

Deliberate differences: (a) one residual block type for every backbone — the *basic* block (two 3×3
convs), two per stage, as the reference uses for ResNet-18/34; for the ResNet-50 family the reference
uses its bottleneck blocks (three in the OCBE stage, a de-ResNet-50 decoder), so parameter counts
differ there. (b) ``precise_bn=True`` (see STFPM and `adlearn.train`): the bottleneck's and decoder's
batch norms get statistics re-estimated for their current weights before validation and at the end;
it matters most in the first epochs (docs/log/2026-12-06-benchmarks-history.md, "Reverse Distillation on the real bottle").
(c) Early stopping only on a validation set the caller passes or holds out (``val_fraction``); the
reference watches the test set. (d) The bottleneck and decoder are kept in the channels-last memory
layout (speed only, same numbers up to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import GaussianBlur2d, TimmFeatureExtractor, conv_bn_relu, residual_stage
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps, cosine_distance, prediction_from_map

ANOMALY_MAP_MODES = ("add", "multiply")


# ----------------------------------------------------------------------------- step 2: OCBE
class OneClassBottleneck(nn.Module):
    """Multi-scale feature fusion + one-class embedding: [e_1, e_2, e_3] -> φ (B, 2·C_3, h_3/2, w_3/2)."""

    def __init__(self, channels: list[int], blocks: int = 2):
        super().__init__()
        c1, c2, c3 = channels
        self.fuse_1 = nn.Sequential(conv_bn_relu(c1, c2, stride=2), conv_bn_relu(c2, c3, stride=2))  # 4 -> 16
        self.fuse_2 = conv_bn_relu(c2, c3, stride=2)  # 8 -> 16
        self.embed = residual_stage(3 * c3, 2 * c3, "down", blocks)  # 16 -> 32

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        e1, e2, e3 = features
        fused = torch.cat([self.fuse_1(e1), self.fuse_2(e2), e3], dim=1)  # (B, 3·C3, h3, w3)
        return self.embed(fused)  # (B, 2·C3, h3/2, w3/2)


# ----------------------------------------------------------------------------- step 3: decoder
class ReverseDecoder(nn.Module):
    """de-ResNet: φ -> [d_1, d_2, d_3], each stage doubling the resolution (returned fine to coarse)."""

    def __init__(self, channels: list[int], blocks: int = 2):
        super().__init__()
        c1, c2, c3 = channels
        self.stage_3 = residual_stage(2 * c3, c3, "up", blocks)  # stride 32 -> 16: like e_3
        self.stage_2 = residual_stage(c3, c2, "up", blocks)  # 16 -> 8: like e_2
        self.stage_1 = residual_stage(c2, c1, "up", blocks)  # 8 -> 4: like e_1

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        d3 = self.stage_3(embedding)
        d2 = self.stage_2(d3)
        d1 = self.stage_1(d2)
        return [d1, d2, d3]


# ----------------------------------------------------------------------------- steps 4-5
def reverse_distillation_loss(
    encoder_features: list[torch.Tensor], decoder_features: list[torch.Tensor]
) -> torch.Tensor:
    """Step 4: Σ_layers mean_batch [1 − cos(vec(e_l), vec(d_l))] over whole flattened maps (a scalar)."""
    loss = 0.0
    for encoded, decoded in zip(encoder_features, decoder_features):
        similarity = F.cosine_similarity(encoded.flatten(1), decoded.flatten(1), dim=1)  # (B,)
        loss = loss + (1 - similarity).mean()
    return loss


def reverse_distillation_anomaly_map(
    encoder_features: list[torch.Tensor],
    decoder_features: list[torch.Tensor],
    image_size: tuple[int, int],
    mode: str = "add",
) -> torch.Tensor:
    """Step 5 before the blur: per-layer 1 − cos maps, upsampled, added or multiplied. -> (B, 1, H, W)"""
    layer_maps = [cosine_distance(e, d) for e, d in zip(encoder_features, decoder_features)]  # [(B, 1, h, w)]
    return combine_layer_maps(layer_maps, image_size, mode, align_corners=True)


# ----------------------------------------------------------------------------- the model
class ReverseDistillation(TrainedModel):
    name = "reverse_distillation"
    # The reference's training (200 epochs, early stopping patience 3); precise_bn is our addition.
    training_defaults = {"max_epochs": 200, "patience": 3, "precise_bn": True}
    presets = {"cpu": {"backbone": "efficientnet_lite0", "val_fraction": 0.2, "max_epochs": 20}}

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        pretrained: str = "auto",
        anomaly_map_mode: str = "add",
        blocks_per_stage: int = 2,
        blur_sigma: float = 4.0,
        lr: float = 0.005,
        betas: tuple[float, float] = (0.5, 0.99),
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        **training,
    ):
        if anomaly_map_mode not in ANOMALY_MAP_MODES:
            raise ValueError(f"anomaly_map_mode must be one of {ANOMALY_MAP_MODES}, got {anomaly_map_mode!r}")
        if len(layers) != 3:
            raise ValueError(
                f"Reverse Distillation fuses exactly three encoder layers (strides 4, 8, 16), got {layers}"
            )
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        if any(side % 32 for side in self.input_size):
            raise ValueError(
                f"Reverse Distillation needs an input size divisible by 32 (the embedding has stride 32 "
                f"and the decoder doubles it back three times), got {self.input_size}: use e.g. "
                f"image_size=256 (or center_crop=224)"
            )
        self.anomaly_map_mode, self.lr, self.betas = anomaly_map_mode, lr, tuple(betas)
        # Step 1: the frozen teacher (eval mode, batch norms folded away).
        self.encoder = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        channels = list(self.encoder.out_dims)
        # Steps 2-3: what is trained.
        self.bottleneck = OneClassBottleneck(channels, blocks_per_stage)
        self.decoder = ReverseDecoder(channels, blocks_per_stage)
        # Channels-last convolutions train faster on a CPU (speed only: docs/log/2026-12-06-benchmarks-history.md).
        for module in (self.bottleneck, self.decoder):
            module.to(memory_format=torch.channels_last)
        self.blur = GaussianBlur2d(sigma=blur_sigma, channels=1)

    def extract_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Steps 1–3: ([e_1, e_2, e_3], [d_1, d_2, d_3]), each (B, C_l, h_l, w_l)."""
        encoded = [
            e.contiguous(memory_format=torch.channels_last)  # no gradient: the teacher is frozen
            for e in self.encoder(images).values()
        ]
        decoded = self.decoder(self.bottleneck(encoded))
        return encoded, decoded

    def configure_optimizers(self):
        parameters = list(self.bottleneck.parameters()) + list(self.decoder.parameters())
        return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas), None

    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        encoded, decoded = self.extract_features(batch["image"])
        return reverse_distillation_loss(encoded, decoded)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        encoded, decoded = self.extract_features(images)
        encoded, decoded = [e.float() for e in encoded], [d.float() for d in decoded]
        anomaly_map = reverse_distillation_anomaly_map(encoded, decoded, images.shape[-2:], self.anomaly_map_mode)
        return self.blur(anomaly_map).squeeze(1)  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))  # image score = max
