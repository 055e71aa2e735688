"""C-Flow (CFLOW-AD) — conditional normalizing flows on feature *fibers* (Gudovskiy, Ishizaka & Kozuka,
"CFLOW-AD: Real-Time Unsupervised Anomaly Detection with Localization via Conditional Normalizing
Flows", WACV 2022, arXiv:2107.12571; reference: anomalib ``anomalib.models.image.cflow``).

Idea: a frozen CNN describes every position of the image by a feature vector, a *fiber*. A normalizing
flow learns the density of the fibers of normal images; a defect's fibers get a low likelihood. Unlike
FastFlow, the flow sees one fiber at a time (fully connected coupling subnets), and to know *where* the
fiber comes from it is **conditioned** on a positional code of the fiber's position: one flow models
the centre of the bottle and its rim differently.

The steps, in the order of the paper (Sec. 3.3, Fig. 2):

1. Encoder: a frozen ImageNet CNN gives K maps (the paper and the reference: ``layer2..layer4`` of a
   Wide-ResNet-50, strides 8/16/32): f_k of shape (B, C_k, h_k, w_k).
2. Condition: the 2-D sinusoidal positional encoding c(y, x) of ``condition_vector`` channels
   (`adlearn.components.positional_encoding_2d`, Eq. 6 of the paper).
3. Decoder per layer k: ``coupling_blocks`` conditional `AllInOneBlock`s on (C_k,) fibers, each subnet
   Linear(c, 2c) → ReLU → Linear(2c, out) on [fiber half, c(y, x)], soft clamp α = ``clamp_alpha``.
4. Per-dimension log-likelihood of a fiber u with code c (Eq. 4–5, divided by C_k as the reference):

       log p(u | c) = ( −C_k/2 · log 2π − ½‖z‖² + log|det J| ) / C_k,     z = g(u, c)

   Training draws the B·h_k·w_k fibers of an image batch in a random order and takes one Adam step
   (lr 1e-4) per chunk of ``fiber_batch_size`` fibers, layer after layer (manual optimization: many
   optimizer steps per image batch), on the loss mean(−log σ(log p)) (the reference's; σ = sigmoid).
5. Anomaly map: per layer p̃_k = exp(log p_k − M_k), bilinearly upsampled (align_corners=True) to the
   image size; map = Σ_k (1 − p̃_k); image score = its maximum.

Defaults (anomalib ``Cflow``): backbone ``wide_resnet50_2`` (timm hub weights), layers ``layer2..4``,
``fiber_batch_size`` 64, ``condition_vector`` 128, ``coupling_blocks`` 8, ``clamp_alpha`` 1.9, hard
permutations, Adam lr 1e-4, 50 epochs with early-stopping patience 2 (on a validation set the caller
passes or holds out). The offline backbones ``efficientnet_lite0/1/2`` map ``layer2..4`` to their stages
of strides 8/16/32.

Deliberate differences from the reference, both about M_k in step 5:

* The reference takes M_k = the maximum of log p_k **over the test batch**, and the final map as
  max(Σ) − Σ over the batch too: an image's score then depends on the other images in its batch, and
  with a batch of one image its own most normal pixel is pinned to 0 (the map is relative to itself).
  Here M_k is a constant of the trained model — the maximum of log p_k over the training images'
  positions (computed at the end of ``fit``, with the kept weights; during training, the running
  maximum of the epoch's training fibers) — and the map is Σ_k (1 − p̃_k): the score of an image is the
  same alone or in any batch.
* The leftover fibers. B·h·w is rarely a multiple of ``fiber_batch_size``: the reference
  (``Cflow.training_step`` in ``anomalib.models.image.cflow.lightning_model``) folds the
  B·h·w mod ``fiber_batch_size`` leftover fibers into its last chunk, which is then up to twice as long (and
  it raises when there are fewer fibers than one chunk); here they make a last, smaller chunk of their own,
  with its own Adam step, so every step sees at most ``fiber_batch_size`` fibers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import AllInOneBlock, TimmFeatureExtractor, dryrun_find_featuremap_dims
from adlearn.components.flow import SequenceFlow, subnet_fc
from adlearn.components.positional_encoding import positional_encoding_2d
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps, prediction_from_map
from adlearn.utils import torch_generator

LOG_2PI = math.log(2 * math.pi)


def build_decoder(
    channels: int, condition_vector: int, coupling_blocks: int, clamp_alpha: float, permute_soft: bool
) -> SequenceFlow:
    """Step 3: ``coupling_blocks`` conditional AllInOneBlocks on (C,) fibers with (P,) conditions."""
    return SequenceFlow(
        [
            AllInOneBlock(
                [(channels,)],
                dims_c=[(condition_vector,)],
                subnet_constructor=subnet_fc(hidden_ratio=2.0),
                affine_clamping=clamp_alpha,
                global_affine_type="SOFTPLUS",
                permute_soft=permute_soft,
            )
            for _ in range(coupling_blocks)
        ]
    )


def to_fibers(feature: torch.Tensor, condition_vector: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: (B, C, h, w) map -> (B·h·w, C) fibers and their (B·h·w, P) positional codes, row-major."""
    batch, channels, height, width = feature.shape
    fibers = feature.permute(0, 2, 3, 1).reshape(-1, channels)  # (B·h·w, C)
    code = positional_encoding_2d(condition_vector, height, width, device=feature.device, dtype=feature.dtype)
    codes = code.permute(1, 2, 0).reshape(1, height * width, condition_vector)  # (1, h·w, P)
    return fibers, codes.expand(batch, -1, -1).reshape(-1, condition_vector)  # (B·h·w, P)


def fiber_log_likelihood(decoder: SequenceFlow, fibers: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Step 4: per-dimension log p(u | c) of every fiber. (N, C), (N, P) -> (N,)"""
    z, log_jac_det = decoder(fibers, c=[codes])
    channels = fibers.shape[1]
    return (-0.5 * channels * LOG_2PI - 0.5 * z.pow(2).sum(dim=1) + log_jac_det) / channels


def cflow_loss(log_likelihood: torch.Tensor) -> torch.Tensor:
    """Step 4's loss: mean(−log σ(log p)) over the fibers (a scalar)."""
    return -F.logsigmoid(log_likelihood).mean()


def cflow_anomaly_map(
    log_likelihoods: list[torch.Tensor], log_likelihood_max: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Step 5: Σ_k upsampled (1 − exp(log p_k − M_k)). [(B, h_k, w_k)], (K,) -> (B, H, W)"""
    maps = [
        1.0 - torch.exp(log_p - log_likelihood_max[k])[:, None]  # (B, 1, h_k, w_k)
        for k, log_p in enumerate(log_likelihoods)
    ]
    return combine_layer_maps(maps, tuple(image_size), "add", align_corners=True)[:, 0]


class Cflow(TrainedModel):
    name = "cflow"
    # The reference's training (anomalib's Cflow config: 50 epochs, early stopping patience 2).
    training_defaults = {"max_epochs": 50, "patience": 2}
    automatic_optimization = False  # one optimizer step per chunk of fibers, many per image batch
    presets = {
        "cpu": {
            "backbone": "efficientnet_lite2",
            "layers": ("layer2", "layer3", "layer4"),
            "batch_size": 8,
            "val_fraction": 0.2,
            "val_anomalies": "synthetic",
            "max_epochs": 10,
            "patience": 2,
        }
    }

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[str, ...] = ("layer2", "layer3", "layer4"),
        pretrained: str = "auto",
        fiber_batch_size: int = 64,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        permute_soft: bool = False,
        lr: float = 1e-4,
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
        if fiber_batch_size < 1:
            raise ValueError(f"fiber_batch_size must be >= 1, got {fiber_batch_size}")
        if coupling_blocks < 1:
            raise ValueError(f"coupling_blocks must be >= 1, got {coupling_blocks}")
        if condition_vector < 4 or condition_vector % 4:
            raise ValueError(
                f"condition_vector must be a positive multiple of 4 (sin/cos codes of x and y), "
                f"got {condition_vector}; the reference uses 128"
            )
        self.fiber_batch_size, self.condition_vector, self.lr = fiber_batch_size, condition_vector, lr
        # Step 1: the frozen encoder.
        self.encoder = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        dims = dryrun_find_featuremap_dims(self.encoder, self.input_size, list(layers))
        self.feature_shapes = [(dims[layer]["num_features"], *dims[layer]["resolution"]) for layer in layers]
        # Step 3: one conditional decoder per layer.
        self.decoders = nn.ModuleList(
            [
                build_decoder(c, condition_vector, coupling_blocks, clamp_alpha, permute_soft)
                for c, _, _ in self.feature_shapes
            ]
        )
        # Step 5's M_k, a constant of the trained model (see the docstring).
        self.register_buffer("log_likelihood_max", torch.zeros(len(layers)))
        self._fiber_order = torch_generator(seed)  # step 4's shuffles (restarted from the run's seed in fit)

    # Step 1
    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[(B, C_k, h_k, w_k)] per layer, float32 (the flows run in float32 even under autocast)."""
        return [feature.float() for feature in self.encoder(images).values()]

    def configure_optimizers(self):
        return torch.optim.Adam(self.decoders.parameters(), lr=self.lr), None

    # Step 4: the random fibers, chunk after chunk
    def training_step(self, batch: dict, trainer) -> torch.Tensor:
        features = self.extract_features(batch["image"])
        losses, counts = [], []
        with torch.autocast(features[0].device.type, enabled=False):
            for k, (decoder, feature) in enumerate(zip(self.decoders, features)):
                fibers, codes = to_fibers(feature, self.condition_vector)
                order = torch.randperm(len(fibers), generator=self._fiber_order).to(fibers.device)  # shuffled
                for chunk in order.split(self.fiber_batch_size):
                    log_p = fiber_log_likelihood(decoder, fibers[chunk], codes[chunk])
                    loss = cflow_loss(log_p)
                    trainer.optimizer_step(loss)
                    self._track_max(k, log_p.detach())
                    losses.append(loss.detach() * len(chunk))
                    counts.append(len(chunk))
        return torch.stack(losses).sum() / sum(counts)  # mean loss per fiber, for the history

    def validation_step(self, batch: dict) -> torch.Tensor:
        """The same loss on every fiber, no step."""
        log_likelihoods = self.layer_log_likelihoods(batch["image"])
        return cflow_loss(torch.cat([log_p.flatten() for log_p in log_likelihoods]))

    def on_fit_start(self, data, trainer) -> None:
        self._fiber_order = torch_generator(trainer.seed)  # the same seed shuffles the fibers the same way

    # Step 5's M_k
    def on_epoch_start(self, trainer) -> None:
        self._epoch_max = torch.full_like(self.log_likelihood_max, -math.inf)

    def _track_max(self, k: int, log_p: torch.Tensor) -> None:
        self._epoch_max[k] = torch.maximum(self._epoch_max[k], log_p.max())
        self.log_likelihood_max[k] = self._epoch_max[k]  # validation after this epoch uses it

    @torch.no_grad()
    def on_fit_end(self, data, trainer) -> None:
        """M_k = max of log p_k over the training images' positions, with the weights that were kept."""
        self.eval()
        maxima = torch.full_like(self.log_likelihood_max, -math.inf)
        for batch in trainer.make_loader(data, shuffle=False):
            images = batch["image"] if isinstance(batch, dict) else batch
            for k, log_p in enumerate(self.layer_log_likelihoods(images.to(self.device))):
                maxima[k] = torch.maximum(maxima[k], log_p.max())
        self.log_likelihood_max.copy_(maxima)

    def layer_log_likelihoods(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Steps 1–4 at test time: [(B, h_k, w_k)] per-dimension log p of every position."""
        features = self.extract_features(images)
        log_likelihoods = []
        with torch.autocast(features[0].device.type, enabled=False):
            for decoder, feature in zip(self.decoders, features):
                batch, _, height, width = feature.shape
                fibers, codes = to_fibers(feature, self.condition_vector)
                log_likelihoods.append(fiber_log_likelihood(decoder, fibers, codes).reshape(batch, height, width))
        return log_likelihoods

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return cflow_anomaly_map(self.layer_log_likelihoods(images), self.log_likelihood_max, images.shape[-2:])

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))
