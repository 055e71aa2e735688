"""FastFlow — unsupervised anomaly detection and localization via 2-D normalizing flows (Yu et al., 2021,
arXiv:2111.07677). Reference implementation: ``anomalib.models.image.fastflow`` (``torch_model``,
``loss``, ``anomaly_map``).

Idea: a normalizing flow f is an invertible network that maps features x to z = f(x) with a cheap
Jacobian determinant, so the exact likelihood of x under a standard normal prior on z is known
(the change-of-variables formula the paper starts from, Sec. 3):

    log p(x) = log N(f(x); 0, I) + log |det ∂f/∂x|
             = −½‖z‖² − (d/2)·log 2π + log |det J|

Trained on normal images only, the flow learns to send normal features to the middle of the
Gaussian; features of a defect land far out (large ‖z‖²) and get a low likelihood. FastFlow keeps
the feature maps 2-D — the flow's coupling subnets are convolutions, so every position's z sees its
neighbourhood — which is what makes it fast and good at localisation.

The steps, in the order of the paper (Sec. 3, "Feature Extractor" then "2D Flow Model"):

1. A frozen ImageNet backbone gives three maps (CNNs: stages of stride 4, 8, 16 = ``layer1..3``),
   each followed by a **learnable** ``LayerNorm([C, h, w])`` (normalises over channels *and*
   positions, with a per-position gain and bias). Transformers (CaiT, DeiT) give one map of
   stride 16 from an intermediate block, already layer-normalised by the backbone
   (`adlearn.components.TransformerFeatureExtractor`).
2. One 2-D flow per scale: ``flow_steps`` `AllInOneBlock`s (affine coupling + global affine +
   channel permutation, clamp α = 2). Each coupling subnet is Conv(k) → ReLU → Conv(k) with
   int(C₁·hidden_ratio) hidden channels; k alternates 3, 1, 3, 1... (3×3 only if ``conv3x3_only``).
3. Loss (negative log-likelihood without the constant), summed over scales, mean over the batch:

       L = Σ_scales  mean_b [ ½ Σ_{c,i,j} z² − log |det J| ]

   Adam(lr 1e-3, weight decay 1e-5) on the flows and the LayerNorms (the backbone stays frozen).
4. Anomaly map: per scale and position the likelihood p = exp(−½ mean_c z²); the map is −p
   (in [−1, 0], higher = more anomalous), bilinearly upsampled to the image size and averaged
   over the scales (`adlearn.models.common.combine_layer_maps`, mode "mean").
5. Image score = the map's maximum.

Defaults (the reference's): backbone ``resnet18`` (timm hub weights), ``flow_steps`` 8,
``conv3x3_only`` False, ``hidden_ratio`` 1.0, 500 epochs with early-stopping patience 3 (used when
``fit`` gets ``val_data``), batch size 32, no gradient clipping. Backbones: ``resnet18``,
``wide_resnet50_2``, ``efficientnet_lite0/1/2`` (packaged offline weights: layers 1–3 = ``blocks.1/2/4``)
or any timm CNN with stride-4/8/16 stages; transformers ``cait_m48_448`` (blocks 1–41, 448 px) and
``deit_base_distilled_patch16_384`` (blocks 1–8, 384 px) — other ``cait*``/``deit*`` models use the
same fraction of their depth. Their weights come from the timm hub; offline, `load_backbone` raises
a `PretrainedWeightsError` that names the alternatives.

With the offline backbones: efficientnet_lite0's stride-4 stage has only 24 channels (ResNet-18's
has 64) and that scale's flow localises poorly. Take the next three stages instead,
``layers=("layer2", "layer3", "layer4")`` (strides 8, 16, 32), with ``conv3x3_only=True`` (the setting
public FastFlow reproductions use for ResNet-18-sized backbones); ``efficientnet_lite2`` (wider and
deeper than lite0, also packaged) localises best. Early stopping without labels:
``val_fraction=0.2, val_anomalies="synthetic"`` holds out 20 % of the training images and scores the
pixel AUROC of Perlin-noise defects pasted into half of them. Per-scale scores and the real-bottle
results of these recipes: docs/log/2026-12-06-benchmarks-history.md ("FastFlow").

Deliberate differences: early stopping only on a validation set the caller passes or holds out (the
reference monitors the *test* set's pixel AUROC); we accept any timm CNN rather than a fixed list;
under mixed precision (CUDA) the backbone runs in bf16/fp16 but the flows and the loss stay in
float32, because the log-determinant sums thousands of small terms that a 16-bit mantissa would swamp.
"""

from __future__ import annotations

import torch
from torch import nn

from adlearn.components import (
    AllInOneBlock,
    TimmFeatureExtractor,
    TransformerFeatureExtractor,
    dryrun_find_featuremap_dims,
    is_transformer,
)
from adlearn.components.flow import SequenceFlow, subnet_conv
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps, prediction_from_map


def build_flow(
    channels: int,
    height: int,
    width: int,
    flow_steps: int,
    conv3x3_only: bool,
    hidden_ratio: float,
    affine_clamping: float = 2.0,
) -> SequenceFlow:
    """Step 2: ``flow_steps`` AllInOneBlocks on (C, h, w) maps; subnet kernels 3, 1, 3, 1, ..."""
    blocks = []
    for step in range(flow_steps):
        kernel_size = 3 if conv3x3_only or step % 2 == 0 else 1
        blocks.append(
            AllInOneBlock(
                [(channels, height, width)],
                subnet_constructor=subnet_conv(kernel_size, hidden_ratio),
                affine_clamping=affine_clamping,
                permute_soft=False,
            )
        )
    return SequenceFlow(blocks)


def fastflow_loss(hidden_variables: list[torch.Tensor], log_jacobians: list[torch.Tensor]) -> torch.Tensor:
    """Step 3: Σ_scales mean_b [½ Σ_{c,i,j} z² − log|det J|]  (a scalar)."""
    loss = 0.0
    for z, log_jac_det in zip(hidden_variables, log_jacobians):  # (B, C, h, w), (B,)
        loss = loss + torch.mean(0.5 * z.pow(2).sum(dim=(1, 2, 3)) - log_jac_det)
    return loss


def fastflow_anomaly_map(hidden_variables: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
    """Step 4: mean over scales of upsampled −exp(−½ mean_c z²). -> (B, H, W), values in [−1, 0]"""
    layer_maps = [
        -torch.exp(-0.5 * z.pow(2).mean(dim=1, keepdim=True))  # (B, 1, h, w) per scale
        for z in hidden_variables
    ]  # z: (B, C, h, w)
    return combine_layer_maps(layer_maps, image_size, "mean").squeeze(1)


class Fastflow(TrainedModel):
    name = "fastflow"
    # The paper's training (500 epochs, early stopping patience 3).
    training_defaults = {"max_epochs": 500, "patience": 3}
    presets = {
        "cpu": {
            "backbone": "efficientnet_lite2",
            "layers": ("layer2", "layer3", "layer4"),
            "conv3x3_only": True,
            "batch_size": 8,
            "val_fraction": 0.2,
            "val_anomalies": "synthetic",
        }
    }

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        pretrained: str = "auto",
        flow_steps: int = 8,
        conv3x3_only: bool = False,
        hidden_ratio: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
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
        self.lr, self.weight_decay = lr, weight_decay

        # Step 1: frozen backbone (+ a learnable LayerNorm per CNN stage).
        if is_transformer(backbone):
            self.feature_extractor = TransformerFeatureExtractor(backbone, pre_trained=pretrained)
            if self.input_size != self.feature_extractor.image_size:
                side = self.feature_extractor.image_size[0]
                raise ValueError(
                    f"FastFlow with {backbone} needs {side}x{side} images (the size its position "
                    f"embedding was trained for); create it with image_size={side}"
                )
            stride = self.feature_extractor.strides[0]
            shapes = [(self.feature_extractor.out_dims[0], self.input_size[0] // stride, self.input_size[1] // stride)]
            self.norms = nn.ModuleList([nn.Identity()])  # the transformer's own norm already ran
        else:
            self.feature_extractor = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
            dims = dryrun_find_featuremap_dims(self.feature_extractor, self.input_size, list(layers))
            shapes = [(dims[layer]["num_features"], *dims[layer]["resolution"]) for layer in layers]
            self.norms = nn.ModuleList([nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes])
        self.feature_shapes = shapes  # [(C, h, w)] per scale

        # Step 2: one flow per scale.
        self.flows = nn.ModuleList([build_flow(c, h, w, flow_steps, conv3x3_only, hidden_ratio) for c, h, w in shapes])

    # Step 1
    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[(B, C, h, w)] per scale: backbone features after the learnable LayerNorm, in float32."""
        features = self.feature_extractor(images).values()  # {layer: (B, C, h, w)}, CNN or transformer
        return [norm(feature.float()) for norm, feature in zip(self.norms, features)]

    # Step 2 (in float32 even under autocast: see the module docstring)
    def flow_forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([z per scale (B, C, h, w)], [log|det J| per scale (B,)])."""
        hidden_variables, log_jacobians = [], []
        with torch.autocast(features[0].device.type, enabled=False):
            for flow, feature in zip(self.flows, features):
                z, log_jac_det = flow(feature.float())
                hidden_variables.append(z)
                log_jacobians.append(log_jac_det)
        return hidden_variables, log_jacobians

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]  # flows + LayerNorms
        return torch.optim.Adam(trainable, lr=self.lr, weight_decay=self.weight_decay), None

    # Step 3
    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        hidden_variables, log_jacobians = self.flow_forward(self.extract_features(batch["image"]))
        return fastflow_loss(hidden_variables, log_jacobians)

    # Steps 4–5
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        hidden_variables, _ = self.flow_forward(self.extract_features(images))
        return fastflow_anomaly_map(hidden_variables, images.shape[-2:])  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))
