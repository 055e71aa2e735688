"""`MultiVariateGaussian`: one Gaussian per feature-map position (PaDiM)
(reference: ``anomalib.models.components.stats.MultiVariateGaussian``).

PaDiM models the C-dimensional patch embedding at every position p of an h×w feature map, over
the B training images, as a Gaussian N(μ_p, Σ_p):

    μ_p = (1/B) Σ_b x_bp                                           mean        (C, h·w)
    Σ_p = (1/(B−1)) Σ_b (x_bp − μ_p)(x_bp − μ_p)ᵀ + 0.01·I         covariance  (h·w, C, C)

(unbiased; the 0.01·I keeps Σ_p invertible when B is small or channels are correlated), and
scores a test patch by its Mahalanobis distance

    M(x_p) = sqrt( max(0, (x_p − μ_p)ᵀ Σ_p⁻¹ (x_p − μ_p)) ).

``fit`` (and ``forward``) return ``[mean, inv_covariance]`` like the reference (whose doc claims
``fit`` returns the covariance; the code returns the inverse from both).

Implementation choices (not in the reference): the statistics are accumulated in float64 as
running sums n, Σx and Σxxᵀ per position, so ``fit`` also accepts an *iterable of batches*
(e.g. a generator over a DataLoader) and never needs every embedding in memory at once;
a tensor input is processed in slices of ``batch_chunk`` images for the same reason. The
inverse is taken in float64 and stored as float32. ``mahalanobis`` is the batched scorer PaDiM uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin, NotFittedError


class MultiVariateGaussian(DynamicBufferMixin):
    """Per-position Gaussian of ``(B, C, h, w)`` embeddings.

    Buffers (empty until ``fit``): ``mean (C, h·w)``, ``inv_covariance (h·w, C, C)``.

    Args:
        regularization: added to the covariance diagonal (0.01 as the reference).
        batch_chunk: images processed at once when ``fit`` gets one big tensor.
    """

    def __init__(self, regularization: float = 0.01, batch_chunk: int = 32) -> None:
        super().__init__()
        self.regularization = regularization
        self.batch_chunk = batch_chunk
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("inv_covariance", torch.empty(0))

    # ------------------------------------------------------------------ fitting
    def fit(self, embedding: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Fit from a ``(B, C, h, w)`` tensor or an iterable of such batches.

        Returns:
            ``[mean (C, h·w), inv_covariance (h·w, C, C)]`` (also stored as buffers).
        """
        if isinstance(embedding, torch.Tensor):
            _check_embedding(embedding)
            batches = embedding.split(self.batch_chunk)  # views, no copy
        else:
            batches = embedding

        # Step 1: running sums per position, in float64 (exact enough for Σxxᵀ − n·μμᵀ).
        count, sum_x, sum_xxt, shape = 0, None, None, None
        for batch in batches:
            _check_embedding(batch)
            if shape is None:
                shape = tuple(batch.shape[1:])
            elif tuple(batch.shape[1:]) != shape:
                raise ValueError(f"all batches must have the same (C, h, w) = {shape}, got {tuple(batch.shape[1:])}")
            x = batch.detach().to(torch.float64).flatten(2)  # (b, C, hw)
            per_position = x.permute(2, 0, 1).contiguous()  # (hw, b, C) contiguous for a fast bmm
            batch_xxt = torch.bmm(per_position.transpose(1, 2), per_position)  # (hw, C, C)
            count += x.shape[0]
            sum_x = x.sum(dim=0) if sum_x is None else sum_x + x.sum(dim=0)  # (C, hw)
            sum_xxt = batch_xxt if sum_xxt is None else sum_xxt.add_(batch_xxt)
        if count < 2:
            raise ValueError(f"MultiVariateGaussian needs at least 2 samples to estimate a covariance, got {count}")

        # Step 2: mean and unbiased covariance, Σ = (Σxxᵀ − n·μμᵀ) / (n − 1), plus ε·I.
        mean = sum_x / count  # (C, hw)
        mean_t = mean.T  # (hw, C)
        outer = mean_t[:, :, None] * mean_t[:, None, :]  # (hw, C, C)
        covariance = (sum_xxt - count * outer) / (count - 1)
        channels = mean.shape[0]
        identity = torch.eye(channels, dtype=torch.float64, device=mean.device)
        covariance += self.regularization * identity

        # Step 3: invert all h·w matrices in one batched call.
        inv_covariance = torch.linalg.inv(covariance)  # (hw, C, C)

        self.mean = mean.to(torch.float32)
        self.inv_covariance = inv_covariance.to(torch.float32)
        return [self.mean, self.inv_covariance]

    def forward(self, embedding: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Same as :meth:`fit`."""
        return self.fit(embedding)

    # ------------------------------------------------------------------ scoring
    def mahalanobis(self, embedding: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of every patch: ``(B, C, h, w)`` -> ``(B, h, w)``."""
        if self.mean.numel() == 0:
            raise NotFittedError(
                "MultiVariateGaussian is not fitted yet: call .fit(embeddings) or load a fitted state dict first"
            )
        _check_embedding(embedding, min_batch=1)
        batch, channels, height, width = embedding.shape
        if channels != self.mean.shape[0] or height * width != self.mean.shape[1]:
            raise ValueError(
                f"embedding has C={channels}, h·w={height * width} but the Gaussian "
                f"was fitted for C={self.mean.shape[0]}, h·w={self.mean.shape[1]}"
            )
        mean = self.mean.to(embedding.device)  # (C, hw)
        inv_cov = self.inv_covariance.to(embedding.device)  # (hw, C, C)

        # (.contiguous(): on CPU, bmm on a permuted view is ~50x slower than on a packed tensor.)
        delta = (embedding.float().flatten(2) - mean).permute(2, 0, 1).contiguous()  # (hw, B, C)
        # dᵀ Σ⁻¹ d for every position and image: one batched matmul over positions.
        squared = (torch.bmm(delta, inv_cov) * delta).sum(dim=2)  # (hw, B)
        distance = squared.clamp_min(0.0).sqrt()  # rounding can dip < 0
        return distance.T.reshape(batch, height, width)

    def extra_repr(self) -> str:
        if self.mean.numel() == 0:
            return "not fitted"
        return f"C={self.mean.shape[0]}, positions={self.mean.shape[1]}"


def _check_embedding(x, min_batch: int = 0) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"embedding must be a 4-D tensor (B, C, h, w), got {shape}")
    if x.shape[0] < min_batch or x.shape[1] == 0 or x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"embedding is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError("embedding contains NaN or inf values")
