"""CS-Flow — fully convolutional cross-scale flows (Rudolph, Wehrbein, Rosenhahn & Wandt, "Fully
Convolutional Cross-Scale-Flows for Image-based Defect Detection", WACV 2022, arXiv:2110.02855;
reference: anomalib ``anomalib.models.image.csflow``).

Idea: describe the image at three resolutions with one frozen CNN, and learn the joint density of the
three feature maps with **one** normalizing flow whose coupling subnets are convolutions that also
look *across* the scales. A defect seen at one scale changes the latents of the neighbouring scales
too, and the flow keeps the maps' 2-D layout, so it localises as well as it detects.

The steps, in the order of the paper (Sec. 3):

1. Pyramid: the image at full, ½ and ¼ size (bilinear, antialiased).
2. Features: each passed through the same frozen CNN, read at a stage of stride 32 -> x⁰, x¹, x² with C
   channels and sizes H/32, H/64, H/128 (each half the previous: the image size must be divisible by
   128). With ``standardize_features=True`` each scale's channels are standardised,
   xˢ_c <- (xˢ_c − μˢ_c) / σˢ_c, with the mean and standard deviation of every channel over the training
   images' positions (computed once before training, saved with the model).
3. Cross-scale flow (`adlearn.components.CrossScaleFlow`): ``n_coupling_blocks`` × (a fixed channel
   permutation per scale, an affine coupling of all three scales whose scales and shifts come from
   cross-convolutions with ``cross_conv_hidden_channels`` hidden channels, soft-clamped to ±``clamp``).
4. Loss: with z the three latents flattened together (D numbers per image),
   L = mean_b [½‖z‖² − log|det J|] / D. Adam(lr 2e-4, β = (0.5, 0.9), ε = 1e-4, weight decay 1e-5), gradient
   norm clipped to 1.
5. Maps: per scale mean_c (z_s)², upsampled bilinearly to the image size; ``map_mode="all"`` multiplies
   the three (anomalib's default, "better in initial tests"), ``"max"`` keeps only the finest scale
   (the paper's choice).
6. Image score: mean over all latent elements of z²/2 (not the map's maximum).

Defaults (anomalib ``Csflow``): ``cross_conv_hidden_channels`` 1024, ``n_coupling_blocks`` 4, ``clamp`` 3,
map mode ALL, 240 epochs with patience 3 (on a validation set the caller passes or holds out).

Deliberate differences from the reference:

* Backbone: the reference reads torchvision's EfficientNet-B5 at node ``features.6.8`` (the end of
  its 6th stage: 304 channels, stride 32, ImageNet weights from the hub). timm only exposes the ends of
  stages with a new stride, so ``layer="layer4"`` here is the *last* stride-32 stage (EfficientNet-B5:
  512 channels; the offline ``efficientnet_lite0``: 320, ``efficientnet_lite2``: 352) — one stage deeper,
  features a little more semantic and less local.
* The pyramid is resized bilinearly with antialiasing (the reference uses nearest-neighbour
  interpolation, which aliases the ½ and ¼ images).
* An image size that does not divide into three scales is a clear error naming the valid sizes
  (the reference fails later, inside the cross-convolutions).
* ``standardize_features`` (off by default, as the reference; on in the ``cpu`` preset, with lr 1e-3
  in place of 2e-4 for the same reason: the budget). The flow
  starts as the identity (every γ = 0), so its first latents are the raw features, whose scale is far
  from N(0, 1) (lite0's stride-32 stage: a loss of about 4.9 per dimension where standard normal
  latents give 0.5); at lr 2e-4 the γs need thousands of steps to grow enough to rescale them, which the
  reference's 240 epochs give and a 30-minute CPU budget does not. A fixed per-channel affine map is
  invertible with a constant log-det, so the model is the same family of densities, only started
  where the latents already have the right scale.
* The loss is per image, as in the paper (the negative log-likelihood of each image): image b's
  ½‖z_b‖² is paired with its own log|det J_b|. The reference's coupling layers
  (``anomalib.models.image.csflow.torch_model.ParallelGlowCouplingLayer``) add their log-determinants up
  over the whole batch into one number, and ``anomalib.models.image.csflow.loss.CsFlowLoss`` subtracts that
  total from every image's ½‖z‖² before the mean: its log-determinant term weighs B times (the batch size)
  more than the prior term, so its optimum moves with the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adlearn.components import TimmFeatureExtractor, dryrun_find_featuremap_dims
from adlearn.components.channel_statistics import ChannelStatistics
from adlearn.components.cross_scale_flow import CrossScaleFlow
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps

N_SCALES = 3
MAP_MODES = ("all", "max")


def image_pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Step 1: [(B, 3, H, W), (B, 3, H/2, W/2), (B, 3, H/4, W/4)]."""
    height, width = images.shape[-2:]
    return [images] + [
        F.interpolate(
            images, size=(height // 2**s, width // 2**s), mode="bilinear", align_corners=False, antialias=True
        )
        for s in range(1, N_SCALES)
    ]


def csflow_loss(latents: list[torch.Tensor], log_jac_det: torch.Tensor) -> torch.Tensor:
    """Step 4: mean_b [½‖z‖² − log|det J|] / D, z = the three latents flattened together (a scalar)."""
    z = torch.cat([latent.flatten(1) for latent in latents], dim=1)  # (B, D)
    return torch.mean(0.5 * z.pow(2).sum(dim=1) - log_jac_det) / z.shape[1]


def csflow_anomaly_map(latents: list[torch.Tensor], image_size: tuple[int, int], mode: str = "all") -> torch.Tensor:
    """Step 5: upsampled mean_c z² per scale, multiplied over the scales ("all") or the finest only ("max").
    -> (B, H, W)"""
    if mode not in MAP_MODES:
        raise ValueError(f"map_mode must be one of {MAP_MODES}, got {mode!r}")
    maps = [latent.pow(2).mean(dim=1, keepdim=True) for latent in latents]  # [(B, 1, h_s, w_s)]
    return combine_layer_maps(maps if mode == "all" else maps[:1], tuple(image_size), "multiply")[:, 0]


def csflow_image_score(latents: list[torch.Tensor]) -> torch.Tensor:
    """Step 6: mean over every latent element of z²/2. -> (B,)"""
    return torch.cat([latent.flatten(1) for latent in latents], dim=1).pow(2).mean(dim=1) / 2


class Csflow(TrainedModel):
    name = "csflow"
    # The reference's training (anomalib's Csflow: 240 epochs, patience 3, gradient clipping 1).
    training_defaults = {"max_epochs": 240, "patience": 3, "gradient_clip_val": 1.0}
    # cpu: standardised features and lr 1e-3 so the flow learns within the budget (docs/log/2026-12-06-benchmarks-history.md).
    presets = {
        "cpu": {
            "backbone": "efficientnet_lite0",
            "cross_conv_hidden_channels": 128,
            "batch_size": 8,
            "standardize_features": True,
            "lr": 1e-3,
            "val_fraction": 0.2,
            "val_anomalies": "synthetic",
            "max_epochs": 30,
            "patience": 3,
        }
    }

    def __init__(
        self,
        backbone: str = "efficientnet_b5",
        layer: str = "layer4",
        pretrained: str = "auto",
        cross_conv_hidden_channels: int = 1024,
        n_coupling_blocks: int = 4,
        clamp: float = 3.0,
        map_mode: str = "all",
        lr: float = 2e-4,
        weight_decay: float = 1e-5,
        standardize_features: bool = False,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        **training,
    ):
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        if map_mode not in MAP_MODES:
            raise ValueError(
                f"map_mode must be one of {MAP_MODES} (ALL: product of the three scales; MAX: the "
                f"finest scale only), got {map_mode!r}"
            )
        self.map_mode, self.lr, self.weight_decay = map_mode, lr, weight_decay
        # Step 2: the frozen extractor, shared by the three scales.
        self.feature_extractor = TimmFeatureExtractor(backbone, [layer], pre_trained=pretrained)
        self.layer = layer
        stride = self.feature_extractor.strides[0]
        multiple = stride * 2 ** (N_SCALES - 1)
        if any(side % multiple for side in self.input_size):
            smaller = max(multiple, self.input_size[0] // multiple * multiple)
            raise ValueError(
                f"CS-Flow needs an image size divisible by {multiple} (three scales 1, 1/2, 1/4 of a "
                f"stride-{stride} backbone, each feature map half the previous one); got "
                f"{self.input_size[0]}x{self.input_size[1]}. Use e.g. image_size={smaller} or "
                f"{smaller + multiple}"
            )
        height, width = self.input_size
        self.feature_shapes = []
        for s in range(N_SCALES):
            dims = dryrun_find_featuremap_dims(self.feature_extractor, (height // 2**s, width // 2**s), [layer])
            self.feature_shapes.append((dims[layer]["num_features"], *dims[layer]["resolution"]))
        # Step 2's optional standardisation: per scale and channel, filled by on_fit_start.
        channels = self.feature_shapes[0][0]
        self.standardize_features = bool(standardize_features)
        self.register_buffer("feature_mean", torch.zeros(N_SCALES, channels))
        self.register_buffer("feature_std", torch.ones(N_SCALES, channels))
        # Step 3
        self.flow = CrossScaleFlow(channels, n_coupling_blocks, cross_conv_hidden_channels, clamp)

    def raw_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Steps 1–2 without the standardisation: [x⁰, x¹, x²] (B, C, H/32·2⁻ˢ, W/32·2⁻ˢ), float32."""
        return [self.feature_extractor(level)[self.layer].float() for level in image_pyramid(images)]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Steps 1–2: the flow's inputs [x⁰, x¹, x²], standardised when ``standardize_features``."""
        features = self.raw_features(images)
        if not self.standardize_features:
            return features
        return [
            (x - mean[:, None, None]) / std[:, None, None]
            for x, mean, std in zip(features, self.feature_mean, self.feature_std)
        ]

    @torch.no_grad()
    def on_fit_start(self, data, trainer) -> None:
        """Step 2's μˢ_c, σˢ_c over every position of the training images (float64 sums, one pass)."""
        if not self.standardize_features:
            return
        statistics = [ChannelStatistics() for _ in range(N_SCALES)]
        for batch in trainer.make_loader(data, shuffle=False):
            images = (batch["image"] if isinstance(batch, dict) else batch).to(self.device)
            for s, x in enumerate(self.raw_features(images)):
                statistics[s].update(x)
        for s, scale in enumerate(statistics):
            self.feature_mean[s], self.feature_std[s] = scale.mean_std()  # a dead channel stays finite

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Step 3: ([z⁰, z¹, z²], log|det J| (B,)), the flow in float32 even under autocast."""
        features = self.extract_features(images)
        with torch.autocast(features[0].device.type, enabled=False):
            return self.flow(features)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.flow.parameters(), lr=self.lr, betas=(0.5, 0.9), eps=1e-4, weight_decay=self.weight_decay
        ), None

    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        return csflow_loss(*self.encode(batch["image"]))

    def predict_step(self, images: torch.Tensor) -> Prediction:
        latents, _ = self.encode(images)
        return Prediction(
            pred_score=csflow_image_score(latents),
            anomaly_map=csflow_anomaly_map(latents, images.shape[-2:], self.map_mode),
        )
