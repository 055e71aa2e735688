"""PaDiM — a Patch Distribution Modeling framework for anomaly detection and localization (Defard et al.,
2020, arXiv:2011.08785). Reference implementation: ``anomalib.models.image.padim``
(``torch_model``, ``anomaly_map``).

Idea: a pretrained CNN describes every image patch with a feature vector. For each patch
*position* (i, j), the normal training images give a cloud of such vectors; PaDiM fits one
multivariate Gaussian N(μ_ij, Σ_ij) per position. A test patch is anomalous when it lies far from its
position's Gaussian, measured by the Mahalanobis distance

    Σ_ij = 1/(N−1) Σ_k (x_ij^k − μ_ij)(x_ij^k − μ_ij)ᵀ + ε·I,  ε = 0.01      (Sec. 3.2, Eq. 1)
    M(x_ij) = sqrt( (x_ij − μ_ij)ᵀ Σ_ij⁻¹ (x_ij − μ_ij) )                  (Sec. 3.3, Eq. 2)

The steps, in the order of the paper:

1. Extract three feature maps (``layer1..layer3``) from a frozen ImageNet CNN (Sec. 3.1).
2. Upsample the coarser maps to the finest one's size (nearest) and concatenate the channels:
   every position gets one embedding vector (448-D for resnet18, 1792-D for wide_resnet50_2).
3. Keep a fixed random subset of ``n_features`` channels (the paper's experiments find this random
   reduction works as well as PCA, for less work).
4. Fit: one Gaussian per position over all training images (`MultiVariateGaussian`).
5. Predict: Mahalanobis distance per position → (B, h, w) map, bilinearly upsampled to the image
   size, smoothed with a Gaussian blur σ = 4; the image score is the map's maximum.

Defaults (the reference's): backbone ``resnet18``, layers ``layer1..layer3``,
``n_features`` 100 for resnet18 and 550 for wide_resnet50_2 (the paper's values). We add a default of
100 for ``efficientnet_lite0`` (whose layers 1–3 map to ``blocks.1/2/4``: 24 + 40 + 112 = 176
channels), the offline backbone used by tests and smoke runs. No optimizer: one pass over the data.
"""

from __future__ import annotations

import torch

from adlearn.components import GaussianBlur2d, MultiVariateGaussian, TimmFeatureExtractor
from adlearn.models.base import MemoryBankModel, Prediction
from adlearn.models.common import concat_upsampled, prediction_from_map, resolve_center_crop, upsample_map

# Paper defaults for the number of randomly kept channels (plus our offline backbone).
DEFAULT_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550, "efficientnet_lite0": 100}


def random_channel_index(total_channels: int, n_features: int, seed: int) -> torch.Tensor:
    """Step 3: the ``n_features`` of ``total_channels`` channels kept, drawn from ``seed`` -> (n_features,) int64.

    The first ``n_features`` of one seeded permutation, so for one seed the choice of d channels is
    the first d of the choice of more.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total_channels, generator=generator)[:n_features]


def mahalanobis_map(
    gaussian: MultiVariateGaussian, embedding: torch.Tensor, image_size: tuple[int, int], blur: GaussianBlur2d
) -> torch.Tensor:
    """Step 5: Mahalanobis distance per position (Sec. 3.3, Eq. 2), bilinearly upsampled, blurred.

    ``embedding (B, d, h, w)`` -> anomaly map ``(B, H, W)``.
    """
    distances = gaussian.mahalanobis(embedding)  # (B, h, w)
    anomaly_map = upsample_map(distances.unsqueeze(1), image_size)  # (B, 1, H, W)
    return blur(anomaly_map).squeeze(1)  # (B, H, W)


class Padim(MemoryBankModel):
    name = "padim"
    # The paper resizes to 256 and center-crops 224; the default resizes only (as anomalib 2.x), which
    # scores the whole image: on the real bottle the maps rank the central pixels the same either way.
    presets = {"paper": {"center_crop": "auto"}, "cpu": {"backbone": "efficientnet_lite0"}}

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        pretrained: str = "auto",
        n_features: int | None = None,
        blur_sigma: float = 4.0,
        image_size: int = 256,
        center_crop: int | str | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        super().__init__(
            image_size=image_size,
            center_crop=resolve_center_crop(image_size, center_crop),
            device=device,
            seed=seed,
            batch_size=batch_size,
        )
        self.save_hyperparameters()
        self.feature_extractor = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        total_channels = sum(self.feature_extractor.out_dims)
        n_features = DEFAULT_N_FEATURES.get(backbone) if n_features is None else n_features
        if n_features is None:
            raise ValueError(
                f"PaDiM has no default n_features for backbone {backbone!r}; pass n_features= "
                f"(at most {total_channels}, the channels of layers {list(layers)})"
            )
        if not 0 < n_features <= total_channels:
            raise ValueError(
                f"n_features={n_features} must be in 1..{total_channels} "
                f"(the channels of layers {list(layers)} of {backbone})"
            )
        # Step 3's random channel choice is drawn once and saved with the model.
        self.register_buffer("channel_index", random_channel_index(total_channels, n_features, seed))
        self.gaussian = MultiVariateGaussian()
        self.blur = GaussianBlur2d(sigma=blur_sigma, channels=1)

    # Steps 1–2: features -> one embedding vector of every channel per position.
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(images)  # {layer: (B, C_l, h_l, w_l)}
        return concat_upsampled(list(features.values()))  # (B, ΣC_l, h, w)

    # Step 3: keep the random channels.
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images).index_select(1, self.channel_index)  # (B, n_features, h, w)

    def collect(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract_features(images)

    # Step 4: one Gaussian per position.
    def fit_bank(self, embeddings: torch.Tensor) -> None:  # (N, n_features, h, w)
        if embeddings.shape[0] < 2:
            raise ValueError("PaDiM needs at least 2 training images to estimate a covariance")
        self.gaussian.fit(embeddings)

    # Step 5: Mahalanobis map, upsampled and blurred; image score = max.
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.extract_features(images)  # (B, n_features, h, w)
        return mahalanobis_map(self.gaussian, embedding, images.shape[-2:], self.blur)  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))  # image score = max
