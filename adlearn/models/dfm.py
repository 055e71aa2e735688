"""DFM — Deep Feature Modeling (Ahuja et al., 2019, "Probabilistic Modeling of Deep Features for
Out-of-Distribution and Adversarial Detection", arXiv:1909.11786). Reference implementation:
``anomalib.models.image.dfm`` (``torch_model``: ``DFMModel`` and ``SingleClassGaussian``).

Idea: normal images' deep features live close to a low-dimensional linear subspace. Fit that
subspace with PCA on the training images' (pooled, flattened) feature maps, then score a test image
in one of two ways:

* ``score_type="fre"`` — **feature reconstruction error** (the paper's FRE score): how far the
  features are from their projection onto the subspace,

      FRE(x) = ‖x − x̂‖²,    x̂ = μ + V_k V_kᵀ (x − μ)

  The error is kept per channel and position, so it also gives a pixel map: the squared error
  summed over channels at each pooled position, upsampled to the image size.
* ``score_type="nll"`` — **negative log-likelihood** of the projected features z = V_kᵀ(x − μ) under
  one Gaussian fitted to the training projections (the paper's Gaussian model, one class only, as in
  the reference; `SingleClassGaussian`), up to constants:

      2·NLL(z) ≈ (z − μ_z)ᵀ Σ_z⁻¹ (z − μ_z) + log |Σ_z|

  Image score only (classification).

The steps:

1. Run a frozen ImageNet CNN and take one feature map (``layer3``).
2. Average-pool it with kernel and stride ``pooling_kernel_size`` (ResNet-50 at 256²: 16×16 → 4×4).
3. Flatten each image's map into one vector (ResNet-50: 1024·4·4 = 16 384-d).
4. Fit: PCA keeping ``pca_level`` (97 %) of the variance; for ``nll`` also a `SingleClassGaussian`
   on the projected training vectors.
5. Score: FRE (sum of squared errors; map = per-position error, bilinearly upsampled) or NLL.

Defaults (anomalib v1's): backbone ``resnet50``, layer ``layer3``, ``pooling_kernel_size=4``,
``pca_level=0.97``, ``score_type="fre"``. Early anomalib versions used ResNet-18's penultimate
(avgpool) vector instead — ``create("dfm", backbone="resnet18", layer="layer4", pooling_kernel_size=8)``
at 256² pools the 8×8 ``layer4`` map to that one 512-d vector. We follow v1. On ``efficientnet_lite0`` ``layer3``
maps to ``blocks.4`` (stride 16, 112 channels).

Differences from anomalib, and why:

* The reconstruction adds the mean back and is compared with the untouched features (anomalib's
  PCA skips both, and the two quirks cancel); the numbers are the same, the code says what it means.
* ``pca_level=0.97`` keeps the *fewest* directions reaching 97 % of the variance (our `PCA`); anomalib's
  PCA keeps one direction fewer (it uses the 0-based index of that position as the count).
* ``nll`` models set ``task = "classification"`` themselves, so callers know there is no map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adlearn.components import PCA, SingleClassGaussian, TimmFeatureExtractor
from adlearn.models.base import MemoryBankModel, Prediction
from adlearn.models.common import upsample_map

SCORE_TYPES = ("fre", "nll")


class Dfm(MemoryBankModel):
    name = "dfm"
    presets = {"cpu": {"backbone": "efficientnet_lite0"}}  # offline ImageNet weights, 256 px

    def __init__(
        self,
        backbone: str = "resnet50",
        layer: str = "layer3",
        pretrained: str = "auto",
        pooling_kernel_size: int = 4,
        pca_level: float = 0.97,
        score_type: str = "fre",
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        if score_type not in SCORE_TYPES:
            raise ValueError(
                f"score_type={score_type!r}: use 'fre' (feature reconstruction error, gives an "
                "anomaly map) or 'nll' (Gaussian negative log-likelihood, image score only)"
            )
        if int(pooling_kernel_size) < 1:
            raise ValueError(f"pooling_kernel_size={pooling_kernel_size} must be >= 1 (1 = no pooling)")
        if not 0 < pca_level:
            raise ValueError(
                f"pca_level={pca_level} must be > 0: a share of variance in (0, 1] or a number of components >= 1"
            )
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size
        )
        self.save_hyperparameters()
        self.score_type = score_type
        self.task = "segmentation" if score_type == "fre" else "classification"
        self.pooling_kernel_size = int(pooling_kernel_size)
        self.feature_extractor = TimmFeatureExtractor(backbone, [layer], pre_trained=pretrained)
        grid = min(self.input_size) // self.feature_extractor.strides[0]  # side of the layer's map
        if grid < self.pooling_kernel_size:
            raise ValueError(
                f"at {min(self.input_size)} px, {layer} of {backbone} is a {grid}x{grid} map, smaller "
                f"than pooling_kernel_size={self.pooling_kernel_size}: use pooling_kernel_size <= "
                f"{max(grid, 1)} or a larger image_size"
            )
        self.pca = PCA(n_components=pca_level)
        self.gaussian = SingleClassGaussian()

    # Steps 1–2: one pooled feature map per image.
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        features = next(iter(self.feature_extractor(images).values()))  # (B, C, h, w)
        if self.pooling_kernel_size > 1:
            # ceil_mode: when h is not a multiple of k (224 px: 14x14 pooled by 4) the last row and
            # column of cells average what they have instead of being dropped from the map
            features = F.avg_pool2d(features, self.pooling_kernel_size, ceil_mode=True)  # (B, C, ⌈h/k⌉, ⌈w/k⌉)
        return features

    # Step 3: flattened to one vector per image.
    def collect(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract_features(images).flatten(1)  # (B, C·h'·w')

    # Step 4: PCA subspace (and, for nll, a Gaussian in it).
    def fit_bank(self, features: torch.Tensor) -> None:  # (N, D)
        if features.shape[0] < 2:
            raise ValueError(f"DFM needs at least 2 training images to fit a PCA subspace; got {features.shape[0]}")
        self.pca.fit(features)
        if self.score_type == "nll":
            self.gaussian.fit(self.pca.transform(features).T)  # SingleClassGaussian takes (k, N)

    # Step 5a: feature reconstruction error, per channel and position.
    def reconstruction_error(self, feature_map: torch.Tensor) -> torch.Tensor:
        features = feature_map.flatten(1)  # (B, D)
        reconstruction = self.pca.inverse_transform(self.pca.transform(features))  # x̂ (B, D)
        return (features - reconstruction).pow(2).reshape(feature_map.shape)  # (B, C, h', w')

    # Step 5b: negative log-likelihood of the projection.
    def negative_log_likelihood(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.gaussian.score_samples(self.pca.transform(feature_map.flatten(1)))  # (B,)

    # Step 5a's map: the error summed over channels at each pooled position, at image size.
    def anomaly_map(self, error: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        score_map = error.sum(dim=1, keepdim=True)  # (B, 1, h', w')
        return upsample_map(score_map, size).squeeze(1)  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        feature_map = self.extract_features(images)  # (B, C, h', w')
        if self.score_type == "nll":
            return Prediction(pred_score=self.negative_log_likelihood(feature_map), anomaly_map=None)
        error = self.reconstruction_error(feature_map)  # (B, C, h', w')
        return Prediction(pred_score=error.flatten(1).sum(1), anomaly_map=self.anomaly_map(error, images.shape[-2:]))
