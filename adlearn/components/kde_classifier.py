"""`KDEClassifier`: PCA + feature scaling + Gaussian KDE -> anomaly probability
(reference: ``anomalib.models.components.classification.KDEClassifier``).

Idea (DFKDE's classifier)
-------------------------
Normal images give CNN feature vectors that crowd together; an anomaly lands where the training
features are sparse. So:

1. ``fit``: (at most ``max_training_points`` random rows) -> PCA to ``n_pca_components`` dims ->
   scale -> `GaussianKDE`.
2. Score: the same PCA and scaling (with the *training* ``max_length``), then the KDE
   log-density log p(x).
3. Turn the log-density into a probability of being anomalous with a falling sigmoid::

       P(anomalous) = 1 / (1 + exp(0.05 * (log p(x) - 12)))

   Low density -> P near 1. The constants are early anomalib's ``threshold_steepness=0.05`` and
   ``threshold_offset=12.0`` (anomalib v1 hard-codes them).

Scaling (`FeatureScalingMethod`):

* ``SCALE`` (default): divide every vector by ``max_length``, the largest L2 norm among the
  projected training vectors; relative lengths are kept, training vectors lie in the unit ball.
* ``NORM``: scale every vector to unit L2 length (only the direction counts).

Defaults (as anomalib v1): ``n_pca_components=16``, ``SCALE``, ``max_training_points=40000``.

Notes / deliberate differences from anomalib
--------------------------------------------
* ``fit`` returns ``False`` *and warns* (naming both numbers) when there are fewer vectors than
  PCA components, and also when the projected features have a singular covariance (for example
  exactly ``n_pca_components`` vectors: centred, they span one dimension less). Pass
  ``strict=True`` to get a ``ValueError`` instead.
* The random training subset uses a generator seeded by ``seed`` (default 0), not the global RNG.
* Log-densities come from `GaussianKDE.log_density` (``logsumexp``): the reference's
  ``log(density + 1e-300)`` gives -inf in float32, where 1e-300 rounds to 0.
* ``pre_process`` does not modify its argument (the reference divides in place); a zero vector
  stays zero under ``NORM`` instead of becoming NaN.
* ``max_length`` is a buffer, so ``state_dict`` / ``load_state_dict`` into a fresh instance
  restores the whole classifier (PCA and KDE buffers resize on load).
"""

from __future__ import annotations

import warnings
from enum import Enum

import torch
from torch import nn

from adlearn.components.dynamic_buffer import NotFittedError
from adlearn.components.gaussian_kde import GaussianKDE
from adlearn.components.kmeans import check_2d_finite
from adlearn.components.pca import PCA

__all__ = ["FeatureScalingMethod", "KDEClassifier", "THRESHOLD_STEEPNESS", "THRESHOLD_OFFSET"]

# The sigmoid that maps a log-density to a probability of being anomalous
# (early anomalib's threshold_steepness and threshold_offset).
THRESHOLD_STEEPNESS = 0.05
THRESHOLD_OFFSET = 12.0


class FeatureScalingMethod(str, Enum):
    """How feature vectors are scaled before the KDE."""

    NORM = "norm"  # each vector to unit L2 length
    SCALE = "scale"  # divide by the largest training vector length


class KDEClassifier(nn.Module):
    """Anomaly probability from a Gaussian KDE on PCA-reduced, scaled features.

    Args:
        n_pca_components: PCA dimensions kept before the KDE (default 16).
        feature_scaling_method: `FeatureScalingMethod` or its string value (default SCALE).
        max_training_points: at most this many training vectors are used (default 40000).
        seed: keyword only; seed of the random training subset (default 0).

    Example:
        >>> clf = KDEClassifier(n_pca_components=4)
        >>> clf.fit(torch.randn(200, 32))
        True
        >>> clf.predict(torch.randn(5, 32)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        n_pca_components: int = 16,
        feature_scaling_method: FeatureScalingMethod | str = FeatureScalingMethod.SCALE,
        max_training_points: int = 40000,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if int(n_pca_components) < 1:
            raise ValueError(f"n_pca_components must be >= 1, got {n_pca_components}")
        if int(max_training_points) < 1:
            raise ValueError(f"max_training_points must be >= 1, got {max_training_points}")
        try:
            self.feature_scaling_method = FeatureScalingMethod(feature_scaling_method)
        except ValueError as error:
            raise ValueError(
                f"feature_scaling_method must be one of "
                f"{[m.value for m in FeatureScalingMethod]}, "
                f"got {feature_scaling_method!r}"
            ) from error
        self.n_pca_components = int(n_pca_components)
        self.max_training_points = int(max_training_points)
        self.seed = seed

        self.pca_model = PCA(n_components=self.n_pca_components)
        self.kde_model = GaussianKDE()
        self.register_buffer("max_length", torch.ones(()))  # overwritten by fit

    @property
    def is_fitted(self) -> bool:
        return self.kde_model.is_fitted

    # ------------------------------------------------------------------ scaling
    def pre_process(
        self, feature_stack: torch.Tensor, max_length: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale ``feature_stack`` (N, k). ``max_length`` defaults to the largest row norm of the
        stack (as in training). Returns ``(scaled features (N, k), max_length)``."""
        row_norms = torch.linalg.vector_norm(feature_stack, ord=2, dim=1)  # (N,)
        if max_length is None:
            max_length = row_norms.max()
        if self.feature_scaling_method == FeatureScalingMethod.NORM:
            # A zero vector has no direction: leave it at zero rather than dividing by 0.
            features = feature_stack / row_norms.clamp_min(torch.finfo(row_norms.dtype).tiny)[:, None]
        else:  # SCALE
            features = feature_stack / max_length
        return features, max_length

    # ------------------------------------------------------------------ fitting
    def _not_fitted(self, reason: str, strict: bool) -> bool:
        message = f"KDEClassifier.fit: {reason}; the classifier was not fitted"
        if strict:
            raise ValueError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False

    def fit(self, embeddings: torch.Tensor, *, strict: bool = False) -> bool:
        """Fit PCA, scaling and KDE on ``embeddings`` (N, D).

        Returns True when fitted. With too few vectors it warns and returns False (anomalib's
        behaviour), or raises ``ValueError`` when ``strict=True``.
        """
        check_2d_finite(embeddings, "KDEClassifier.fit")
        n_points = embeddings.shape[0]
        if n_points < self.n_pca_components:
            return self._not_fitted(
                f"not enough feature vectors: got N={n_points}, need at least n_pca_components={self.n_pca_components}",
                strict,
            )

        # A random subset keeps the KDE (which compares every query with every point) affordable.
        if n_points > self.max_training_points:
            generator = torch.Generator().manual_seed(int(self.seed))
            rows = torch.randperm(n_points, generator=generator)[: self.max_training_points]
            embeddings = embeddings[rows.to(embeddings.device)]

        # Fit fresh PCA / KDE models and install them only on success, so a failed refit leaves
        # a previously fitted classifier intact.
        pca_model, kde_model = PCA(n_components=self.n_pca_components), GaussianKDE()
        projected = pca_model.fit_transform(embeddings)  # (N', k)
        features, max_length = self.pre_process(projected)
        try:
            kde_model.fit(features)
        except ValueError:  # singular covariance: not enough distinct vectors
            return self._not_fitted(
                f"the {features.shape[1]}-d projected features have a singular covariance "
                f"(N={features.shape[0]} vectors, n_pca_components={self.n_pca_components}; "
                "more than n_pca_components linearly independent vectors are needed)",
                strict,
            )
        self.pca_model, self.kde_model = pca_model, kde_model
        self.max_length = max_length.detach().clone().reshape(())
        return True

    # ------------------------------------------------------------------ scoring
    def compute_kde_scores(self, features: torch.Tensor, as_log_likelihood: bool = False) -> torch.Tensor:
        """KDE density (or log-density if ``as_log_likelihood``) of ``features`` (N, D) -> (N,)."""
        if not self.is_fitted:
            raise NotFittedError("KDEClassifier is not fitted yet: call fit(embeddings) first")
        projected = self.pca_model.transform(features)  # (N, k)
        scaled, _ = self.pre_process(projected, self.max_length)
        log_density = self.kde_model.log_density(scaled)  # (N,)
        return log_density if as_log_likelihood else torch.exp(log_density)

    @staticmethod
    def compute_probabilities(scores: torch.Tensor) -> torch.Tensor:
        """Probability of being anomalous from log-densities:
        1 / (1 + exp(0.05 * (scores - 12))), written as a sigmoid so it cannot overflow."""
        return torch.sigmoid(-THRESHOLD_STEEPNESS * (scores - THRESHOLD_OFFSET))

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Probability that each row of ``features`` (N, D) is anomalous -> (N,)."""
        log_density = self.compute_kde_scores(features, as_log_likelihood=True)
        return self.compute_probabilities(log_density)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Same as `predict`."""
        return self.predict(features)
