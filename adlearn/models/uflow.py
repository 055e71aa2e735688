"""U-Flow — a U-shaped normalizing flow with an unsupervised threshold (Tailanian, Pardo & Musé, 2023,
"U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised Threshold",
arXiv:2211.12353; reference: anomalib ``anomalib.models.image.uflow``).

Idea: like FastFlow, a flow turns multi-scale features into Gaussian latents and a low likelihood marks
an anomaly. Two things are new:

* the flows of the scales are **one invertible U-Net**: the coarsest scale is transformed first, half of
  its output is invertibly upsampled and joins the next finer scale's input, and so on — the fine
  scales see the context of the coarse ones while the whole stays a flow with an exact likelihood;
* because the latents of normal images follow N(0, I) exactly, the segmentation threshold is not
  tuned on labels but fixed by an **a-contrario** test: the Number of False Alarms of each region
  (`adlearn.components.nfa`), NFA < ε = 1 ("at most one false region per image on average").

The steps, in the order of the paper (Sec. 3, Fig. 2):

1. Features: a frozen CNN's stages (the reference's CNN layout ``layer1..layer3``, strides 4/8/16 — each
   exactly half the size of the previous one), each followed by a learnable ``LayerNorm([C, h, w])``.
2. U-shaped flow (`UShapedFlow`), coarse to fine. At scale s:
   x_s = concat(features_s, up_{s+1}) → ``flow_steps`` `AllInOneBlock`s (subnet Conv(k) → ReLU → Conv(k),
   k = 3 on even steps and 1 on odd ones — ``subnet_kernels=(3, 1)`` cycled over the steps — clamp 2)
   → split the channels: the first ⌊C/8⌋·4 go *up*, the rest are this scale's latent z_s.
   up_s = depth-to-space (pixel shuffle: 4 channels → 2×2 positions; a permutation, log-det 0).
   The finest stage's whole output is z_0.
3. Loss: mean over the batch of Σ_s ½‖z_s‖² − log|det J| (the negative log-likelihood without its
   constant). Adam (lr 1e-3, weight decay 1e-5), the learning rate falling linearly to 0.4× over 25,000
   steps.
4. Anomaly map: per scale the likelihood exp(−½ mean_c z_s²), upsampled bilinearly, averaged over the
   scales; map = 1 − that average (optionally smoothed by a Gaussian blur, ``blur_sigma``; the reference
   does not blur); image score = the map's maximum.
5. Segmentation: log-NFA per region (window 7 at the finest scale, halved per scale; candidates
   z² above the χ²(1) median), mask = log-NFA < log10 ε — returned by ``predict`` as ``pred_mask``.

Defaults (anomalib ``Uflow``): ``flow_steps`` 4, ``affine_clamp`` 2.0, ``affine_subnet_channels_ratio`` 1.0,
hard permutations, 200 epochs with patience 20 (on a validation set the caller passes or holds out).

Deliberate differences from the reference:

* Backbone: the reference's default is "MCaiT" (CaiT-M48 at 448 px + CaiT-S24 at 224 px, timm hub
  weights); here any timm CNN with the reference's CNN layout (``layer1..layer3``), default ``resnet18``,
  and the offline ``efficientnet_lite0/1/2`` in the tests and the ``cpu`` preset.
* The ``cpu`` preset (``efficientnet_lite2``, 384 px, all-3×3 subnets, ``subnet_kernels=(3,)``, 8 flow
  steps per scale) departs from the reference's 3×3 / 1×1 alternation, its 4 steps and its 448-px input:
  each choice was made on the held-out synthetic-defect validation score, 384 against 448 px a tie settled
  by cost (docs/log/2026-12-06-benchmarks-history.md, "U-Flow"). FastFlow, on the same backbone, is better off with the deeper stages
  (its stride-4 scale alone is weak); U-Flow's finest scale is conditioned on the coarser ones and profits
  from the stride-4 detail.
* The ``cpu`` preset also smooths the map (``blur_sigma=6``: PaDiM's and PatchCore's σ = 4 at 256 px, scaled to
  384 px); the reference leaves it raw. The σ was chosen on the held-out synthetic-defect validation score
  averaged over three seeds, like the other preset choices.
* The NFA mask is used: ``predict`` returns it, `adlearn.evaluate` reports its pixel F1
  (``pixel_f1_mask``) next to the F1-max of the best threshold chosen with the labels. How scales are
  combined and windows are cut at the border is explained in `adlearn.components.nfa`.
* The loss is per image, as in the paper (each image's negative log-likelihood, averaged over the batch):
  step 3 pairs image b's Σ_s ½‖z_s‖² with its own log|det J_b|. The reference
  (``anomalib.models.image.uflow.loss.UFlowLoss``) sums the prior term ½‖z‖² over the scales *and over
  the batch* into one number before subtracting the batch's per-image log-determinants and averaging:
  its prior term weighs B times (the batch size) more than the log-determinant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import AllInOneBlock, GaussianBlur2d, TimmFeatureExtractor, dryrun_find_featuremap_dims
from adlearn.components.flow import SequenceFlow, subnet_conv
from adlearn.components.nfa import nfa_segmentation
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps


def channels_going_up(channels: int) -> int:
    """Step 2's split: ⌊C/8⌋·4 channels go up (a multiple of 4, for the 2×2 pixel shuffle)."""
    return (channels // 8) * 4


class UShapedFlow(nn.Module):
    """Step 2: [features_s (B, C_s, h_s, w_s)], finest first, each half the size of the previous ->
    ([z_s], log|det J| (B,)); ``rev=True`` maps latents back to features."""

    def __init__(
        self,
        shapes: list[tuple[int, int, int]],
        flow_steps: int = 4,
        affine_clamp: float = 2.0,
        hidden_ratio: float = 1.0,
        permute_soft: bool = False,
        subnet_kernels: tuple[int, ...] = (3, 1),
    ) -> None:
        super().__init__()
        if not subnet_kernels or any(k < 1 or k % 2 == 0 for k in subnet_kernels):
            raise ValueError(f"subnet_kernels must be odd kernel sizes (e.g. (3, 1)), got {subnet_kernels}")
        for (_, h_fine, w_fine), (_, h, w) in zip(shapes, shapes[1:]):
            if (h_fine, w_fine) != (2 * h, 2 * w):
                raise ValueError(
                    f"U-Flow needs each feature scale to be exactly half the previous one, got "
                    f"{[tuple(s[1:]) for s in shapes]}; use an image size divisible by the largest "
                    f"stride (e.g. 256 for strides 4/8/16 or 8/16/32)"
                )
        self.shapes = [tuple(s) for s in shapes]
        self.stage_channels, self.up_channels = [], []
        arriving = 0  # channels coming up from the coarser scale
        for channels, _height, _width in reversed(self.shapes):
            stage = channels + arriving
            self.stage_channels.insert(0, stage)
            up = channels_going_up(stage) if len(self.stage_channels) < len(self.shapes) else 0
            self.up_channels.insert(0, up)
            arriving = up // 4
        self.latent_channels = [c - u for c, u in zip(self.stage_channels, self.up_channels)]
        self.stages = nn.ModuleList(
            [
                SequenceFlow(
                    [
                        AllInOneBlock(
                            [(channels, h, w)],
                            subnet_constructor=subnet_conv(subnet_kernels[k % len(subnet_kernels)], hidden_ratio),
                            affine_clamping=affine_clamp,
                            permute_soft=permute_soft,
                        )
                        for k in range(flow_steps)
                    ]
                )
                for channels, (_, h, w) in zip(self.stage_channels, self.shapes)
            ]
        )

    def forward(self, xs: list[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self._reverse(xs) if rev else self._forward(xs)

    def _forward(self, features: list[torch.Tensor]):
        latents: list[torch.Tensor | None] = [None] * len(features)
        log_det = features[0].new_zeros(features[0].shape[0])
        up = None
        for s in reversed(range(len(features))):  # coarse to fine
            x = features[s] if up is None else torch.cat([features[s], up], dim=1)
            x, stage_log_det = self.stages[s](x)
            log_det = log_det + stage_log_det
            going_up, latents[s] = torch.split(x, [self.up_channels[s], self.latent_channels[s]], dim=1)
            up = F.pixel_shuffle(going_up, 2) if self.up_channels[s] else None  # (B, up/4, 2h, 2w)
        return latents, log_det

    def _reverse(self, latents: list[torch.Tensor]):
        features: list[torch.Tensor | None] = [None] * len(latents)
        log_det = latents[0].new_zeros(latents[0].shape[0])
        up = None  # fine to coarse: undo in reverse
        for s in range(len(latents)):
            x = latents[s] if up is None else torch.cat([F.pixel_unshuffle(up, 2), latents[s]], dim=1)
            x, stage_log_det = self.stages[s](x, rev=True)
            log_det = log_det + stage_log_det
            channels = self.shapes[s][0]
            features[s], up = torch.split(x, [channels, x.shape[1] - channels], dim=1)
            up = up if up.shape[1] else None
        return features, log_det


def uflow_loss(latents: list[torch.Tensor], log_jac_det: torch.Tensor) -> torch.Tensor:
    """Step 3: mean_b [Σ_s ½‖z_s‖² − log|det J|] (a scalar)."""
    squared = sum(0.5 * z.pow(2).flatten(1).sum(dim=1) for z in latents)  # (B,)
    return torch.mean(squared - log_jac_det)


def uflow_anomaly_map(latents: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
    """Step 4: 1 − mean over scales of upsampled exp(−½ mean_c z²). -> (B, H, W), values in [0, 1]"""
    likelihoods = [torch.exp(-0.5 * z.pow(2).mean(dim=1, keepdim=True)) for z in latents]  # [(B, 1, h_s, w_s)]
    return 1.0 - combine_layer_maps(likelihoods, tuple(image_size), "mean")[:, 0]


class Uflow(TrainedModel):
    name = "uflow"
    # The reference's training (anomalib's Uflow config: 200 epochs, patience 20); LR decays per step.
    training_defaults = {"max_epochs": 200, "patience": 20}
    scheduler_interval = "step"
    # cpu: each choice made on the held-out synthetic-defect validation score (docs/log/2026-12-06-benchmarks-history.md, "U-Flow").
    presets = {
        "cpu": {
            "backbone": "efficientnet_lite2",
            "subnet_kernels": (3,),
            "image_size": 384,
            "blur_sigma": 6.0,
            "flow_steps": 8,
            "batch_size": 8,
            "val_fraction": 0.2,
            "val_anomalies": "synthetic",
            "max_epochs": 30,
            "patience": 3,
        }
    }

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        pretrained: str = "auto",
        flow_steps: int = 4,
        affine_clamp: float = 2.0,
        affine_subnet_channels_ratio: float = 1.0,
        permute_soft: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        lr_decay_steps: int = 25_000,
        nfa_window: int = 7,
        nfa_probability_thr: float = 0.5,
        nfa_epsilon: float = 1.0,
        subnet_kernels: tuple[int, ...] = (3, 1),
        blur_sigma: float = 0.0,
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
        if flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0 (0 = no blur, the reference), got {blur_sigma}")
        self.lr, self.weight_decay, self.lr_decay_steps = lr, weight_decay, lr_decay_steps
        self.nfa = {"window_size": nfa_window, "probability_thr": nfa_probability_thr, "epsilon": nfa_epsilon}
        # Step 1: frozen backbone + learnable LayerNorms.
        self.feature_extractor = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        dims = dryrun_find_featuremap_dims(self.feature_extractor, self.input_size, list(layers))
        self.feature_shapes = [(dims[layer]["num_features"], *dims[layer]["resolution"]) for layer in layers]
        self.norms = nn.ModuleList(
            [nn.LayerNorm(list(shape), elementwise_affine=True) for shape in self.feature_shapes]
        )
        # Step 2
        self.flow = UShapedFlow(
            self.feature_shapes,
            flow_steps,
            affine_clamp,
            affine_subnet_channels_ratio,
            permute_soft,
            tuple(subnet_kernels),
        )
        # Step 4's optional smoothing
        self.blur = GaussianBlur2d(sigma=blur_sigma, channels=1) if blur_sigma > 0 else None

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Step 1: [(B, C_s, h_s, w_s)], finest first, float32."""
        features = self.feature_extractor(images).values()
        return [norm(feature.float()) for norm, feature in zip(self.norms, features)]

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Steps 1–2: ([z_s], log|det J|), the flow in float32 even under autocast."""
        features = self.extract_features(images)
        with torch.autocast(features[0].device.type, enabled=False):
            return self.flow(features)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(
            [p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=0.4, total_iters=self.lr_decay_steps
        )
        return optimizer, scheduler

    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        return uflow_loss(*self.encode(batch["image"]))

    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5: (log10 NFA (B, H, W), mask (B, H, W) bool) of images."""
        latents, _ = self.encode(images)
        return nfa_segmentation(latents, images.shape[-2:], **self.nfa)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        latents, _ = self.encode(images)
        anomaly_map = uflow_anomaly_map(latents, images.shape[-2:])  # step 4, (B, H, W)
        if self.blur is not None:
            anomaly_map = self.blur(anomaly_map[:, None])[:, 0]
        _, mask = nfa_segmentation(latents, images.shape[-2:], **self.nfa)  # step 5
        return Prediction(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map, pred_mask=mask)
