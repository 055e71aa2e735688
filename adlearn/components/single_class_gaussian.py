"""`SingleClassGaussian`: the Gaussian density model of DFM
(reference: ``anomalib.models.image.dfm.torch_model.SingleClassGaussian``).

DFM fits one Gaussian N(μ, Σ) to the (PCA-reduced) features of the normal training images and
scores a test feature f by twice its negative log-likelihood, without the constant:

    score(f) = (f − μ)ᵀ Σ⁻¹ (f − μ) + log|Σ|

Σ is never formed. With X̃ = (X − μ)/√N (features × samples) and its thin SVD X̃ = U·S·Vᵀ,
Σ = X̃X̃ᵀ = U·S²·Uᵀ (the *biased* covariance, divided by N), hence

    (f − μ)ᵀ Σ⁻¹ (f − μ) = ‖ ((f − μ)·U) / S ‖²       and       log|Σ| = 2·Σ log S.

**Layout:** ``fit`` takes the data *transposed*, ``(D, N)`` = features × samples, as the
reference does; ``fit_samples(x)`` takes the usual ``(N, D)``. ``score_samples`` takes ``(N, D)``.

Deviation: directions with (numerically) zero variance are dropped (S below
``S.max() · max(D, N) · machine-eps``, NumPy's rank tolerance), i.e. Σ⁻¹ is the pseudo-inverse.
The reference keeps them and divides by ~0, giving inf/NaN scores when N ≤ D. On full-rank data
nothing changes. The SVD runs in float64; buffers are float32.
"""

from __future__ import annotations

import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin, NotFittedError


class SingleClassGaussian(DynamicBufferMixin):
    """Gaussian density of one class of samples, scored by squared Mahalanobis distance + log|Σ|.

    Buffers (empty until ``fit``): ``mean_vec (D,)``, ``u_mat (D, r)``, ``sigma_mat (r,)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_vec", torch.empty(0))
        self.register_buffer("u_mat", torch.empty(0))
        self.register_buffer("sigma_mat", torch.empty(0))

    def fit(self, dataset: torch.Tensor) -> SingleClassGaussian:
        """Fit on ``dataset (D, N)`` — features × samples, i.e. one sample per *column*."""
        if not isinstance(dataset, torch.Tensor) or dataset.dim() != 2:
            shape = tuple(dataset.shape) if isinstance(dataset, torch.Tensor) else type(dataset).__name__
            raise ValueError(
                f"dataset must be a 2-D tensor (D features, N samples) — note the "
                f"transposed layout; use fit_samples for (N, D). Got {shape}"
            )
        num_features, num_samples = dataset.shape
        if num_features == 0 or num_samples < 2:
            raise ValueError(
                f"SingleClassGaussian needs at least 2 samples (columns) and 1 feature, "
                f"got dataset of shape (D={num_features}, N={num_samples})"
            )
        if not torch.isfinite(dataset).all():
            raise ValueError("dataset contains NaN or inf values")

        # Step 1: centre over samples and scale by 1/√N, so X̃X̃ᵀ is the covariance.
        data = dataset.to(torch.float64)
        mean = data.mean(dim=1)  # (D,)
        scaled = (data - mean[:, None]) / num_samples**0.5  # (D, N)

        # Step 2: thin SVD; Σ = U S² Uᵀ.
        u, s, _ = torch.linalg.svd(scaled, full_matrices=False)  # (D, r), (r,)

        # Step 3: keep the directions that really carry variance (pseudo-inverse tolerance).
        tolerance = s.max() * max(num_features, num_samples) * torch.finfo(torch.float64).eps
        keep = s > tolerance
        if not keep.any():
            raise ValueError("all samples are identical (zero variance): cannot fit a Gaussian")

        self.mean_vec = mean.to(torch.float32)
        self.u_mat = u[:, keep].to(torch.float32)
        self.sigma_mat = s[keep].to(torch.float32)
        return self

    def fit_samples(self, samples: torch.Tensor) -> SingleClassGaussian:
        """Convenience: fit on ``samples (N, D)``, one sample per row."""
        if not isinstance(samples, torch.Tensor) or samples.dim() != 2:
            raise ValueError("samples must be a 2-D tensor (N samples, D features)")
        return self.fit(samples.T)

    def score_samples(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(N,)``: squared Mahalanobis distance + log|Σ| (2 × NLL − const)."""
        if self.mean_vec.numel() == 0:
            raise NotFittedError(
                "SingleClassGaussian is not fitted yet: call .fit(dataset (D, N)) or load a fitted state dict first"
            )
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != self.mean_vec.numel():
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must have shape (N, {self.mean_vec.numel()}), got {shape}")
        device = features.device
        mean, u, sigma = (t.to(device) for t in (self.mean_vec, self.u_mat, self.sigma_mat))

        whitened = ((features.float() - mean) @ u) / sigma  # (N, r)
        squared_mahalanobis = (whitened * whitened).sum(dim=1)  # (N,)
        log_det = 2.0 * torch.log(sigma).sum()  # log|Σ|
        return squared_mahalanobis + log_det

    def forward(self, dataset: torch.Tensor) -> SingleClassGaussian:
        """Same as :meth:`fit` (the reference's ``forward``)."""
        return self.fit(dataset)
