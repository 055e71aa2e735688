"""DFKDE — Deep Feature Kernel Density Estimation (an anomalib baseline; no paper). Reference
implementation: ``anomalib.models.image.dfkde`` (``torch_model``) with
``anomalib.models.components.classification.KDEClassifier``; the KDE bandwidth is Scott's rule
(D. W. Scott, "Multivariate Density Estimation", 1992).

Idea: describe a whole image by one vector — the globally averaged deep features of a pretrained
CNN — and model where normal images' vectors lie with a kernel density estimate. A test image whose
vector falls where the training vectors are sparse is anomalous. Image-level only: there is no map.

    z = PCA₁₆(x)                                        (x: pooled CNN features of the image)
    z̃ = z / max_train ‖z‖₂                              ("scale": keep relative lengths)
    p(z̃) = 1/N Σᵢ 𝒩(z̃ | z̃ᵢ, h²Σ),   h = N^(−1/(d+4))   (Gaussian KDE, Scott's bandwidth)
    P(anomalous) = 1 / (1 + exp(0.05 · (log p(z̃) − 12)))

The steps:

1. Run a frozen ImageNet CNN and take ``layer4``.
2. Global average pooling → one vector per image (resnet18: 512-d; efficientnet_lite0 ``layer4`` =
   ``blocks.6``: 320-d). With several layers the pooled vectors are concatenated along the features.
3. Fit: stack the training vectors → `KDEClassifier` (random subset of at most
   ``max_training_points`` → PCA to ``n_pca_components`` → scaling → `GaussianKDE`).
4. Predict: `KDEClassifier.predict` → probability in (0, 1) that the image is anomalous.

Defaults (anomalib v1's): backbone ``resnet18``, layers ``("layer4",)``,
``n_pca_components=16``, ``feature_scaling_method="scale"``, ``max_training_points=40000``.
Early anomalib versions described ResNet-50's pooled 2048-d vector instead: that is
``create("dfkde", backbone="resnet50")`` — its ``layer4`` global-average-pooled *is* the penultimate
(avgpool) output. Both are one argument apart; we follow v1.

Differences from anomalib, and why:

* Fewer training images than PCA components is an error that names both numbers and the fix
  (anomalib logs a message and leaves the model unfitted).
* Several layers are concatenated along the feature axis (anomalib's reference stacks them along
  the batch axis, which mixes layers up as if they were extra images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adlearn.components import KDEClassifier, TimmFeatureExtractor
from adlearn.models.base import MemoryBankModel, Prediction


class Dfkde(MemoryBankModel):
    name = "dfkde"
    presets = {"cpu": {"backbone": "efficientnet_lite0"}}  # offline ImageNet weights, 256 px

    task = "classification"

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[str, ...] = ("layer4",),
        pretrained: str = "auto",
        n_pca_components: int = 16,
        feature_scaling_method: str = "scale",
        max_training_points: int = 40000,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size
        )
        self.save_hyperparameters()
        if isinstance(layers, str):
            layers = (layers,)
        self.feature_extractor = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        self.classifier = KDEClassifier(
            n_pca_components=n_pca_components,
            feature_scaling_method=feature_scaling_method,
            max_training_points=max_training_points,
            seed=seed,
        )

    # Steps 1–2: one pooled feature vector per image.
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(images)  # {layer: (B, C_l, h_l, w_l)}
        pooled = [F.adaptive_avg_pool2d(f, 1).flatten(1) for f in features.values()]  # [(B, C_l)]
        return torch.cat(pooled, dim=1)  # (B, ΣC_l)

    def collect(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract_features(images)

    # Step 3: PCA + scaling + KDE on the training vectors.
    def fit_bank(self, features: torch.Tensor) -> None:  # (N, D)
        n_components = self.classifier.n_pca_components
        if features.shape[0] <= n_components:
            raise ValueError(
                f"DFKDE got {features.shape[0]} training images but n_pca_components={n_components}: the "
                f"KDE needs more training images than PCA components. Train on at least "
                f"{n_components + 1} images, or lower n_pca_components (e.g. n_pca_components="
                f"{max(1, features.shape[0] // 2)})"
            )
        self.classifier.fit(features, strict=True)

    # Step 4: probability of being anomalous.
    def predict_step(self, images: torch.Tensor) -> Prediction:
        return Prediction(pred_score=self.classifier.predict(self.extract_features(images)), anomaly_map=None)
