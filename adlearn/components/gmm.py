"""`GaussianMixture`: a mixture of full-covariance Gaussians fitted by EM
(reference: ``anomalib.models.components.cluster.GaussianMixture``).

Idea
----
Model the data as K Gaussian "blobs"::

    p(x) = sum_k  pi_k * N(x | mu_k, Sigma_k)

Expectation-Maximisation alternates:

* E-step: responsibilities  r_ik = pi_k N(x_i|mu_k,Sigma_k) / sum_j pi_j N(x_i|mu_j,Sigma_j),
  computed in log space with ``logsumexp`` so tiny densities do not underflow;
* M-step: N_k = sum_i r_ik,  pi_k = N_k / N,  mu_k = sum_i r_ik x_i / N_k,
  Sigma_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + 1e-6 I   (the jitter keeps Sigma_k
  invertible when a cluster is flat in some direction).

The objective is the mean log-likelihood  mean_i log p(x_i); EM never lowers it. We stop when it
changes by less than ``tol`` (or after ``n_iter`` rounds, with a warning). The Gaussian log-density
uses the Cholesky factor L of Sigma (Sigma = L L^T):
log N(x|mu,Sigma) = -1/2 (D log 2pi + 2 sum log diag L + ||L^-1 (x - mu)||^2).

Start: `KMeans` labels, one-hot encoded as responsibilities, then one M-step.

Defaults (as anomalib v1): ``n_iter=100``, ``tol=1e-3``, jitter 1e-6. AI-VAD's velocity density
estimator uses this with K=2 and scores with the negative log-likelihood.

Notes / deliberate differences from anomalib
--------------------------------------------
* EM runs in float64 whatever the input dtype (full covariances with a 1e-6 jitter are close to
  singular in float32); buffers are stored in the input's dtype and results come back in it.
* ``seed`` (int or ``torch.Generator``) seeds the KMeans start; ``None`` uses torch's global RNG.
* Clear errors: `NotFittedError` before ``fit``; ``ValueError`` for empty / NaN / wrongly shaped
  data or more components than points.
"""

from __future__ import annotations

import math
import operator
import warnings

import torch
import torch.nn.functional as F

from adlearn.components.dynamic_buffer import DynamicBufferMixin, check_fitted_rows
from adlearn.components.kmeans import KMeans, _is_int, check_2d_finite

__all__ = ["GaussianMixture", "mahalanobis_to_components"]


def _squared_mahalanobis(x: torch.Tensor, means: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of every point to every component -> (K, N), given Σ_k = L_k L_kᵀ."""
    diff = x.unsqueeze(0) - means.unsqueeze(1)  # (K, N, D)
    # Solve L_k y = (x_i - mu_k): ||y||^2 is the squared Mahalanobis distance.
    solved = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, D, N)
    return solved.pow(2).sum(dim=1)  # (K, N)


def mahalanobis_to_components(points: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of every point to every component: ``(N, D)``, ``(K, D)``, ``(K, D, D)`` -> ``(N, K)``.

    With Σ_k = L_k L_kᵀ (Cholesky), M_k(x) = ‖L_k⁻¹ (x − μ_k)‖ (Bishop Sec. 2.3).
    """
    return _squared_mahalanobis(points, means, torch.linalg.cholesky(covariances)).sqrt().T  # (N, K)


class GaussianMixture(DynamicBufferMixin):
    """Gaussian mixture model with full covariances, fitted by EM.

    Args:
        n_components: number of Gaussians K.
        n_iter: maximum number of EM iterations (default 100).
        tol: stop when the mean log-likelihood changes by less than this (default 1e-3).
        seed: int or ``torch.Generator`` for the KMeans start (keyword only).
        reg_covar: diagonal jitter added to every covariance (keyword only, default 1e-6).

    Buffers after ``fit``: ``means`` (K, D), ``covariances`` (K, D, D), ``weights`` (K,).

    Example (anomalib's doc example; component order may be swapped):
        >>> data = torch.tensor([[2, 1], [2, 2], [2, 3], [7, 5], [8, 5], [9, 5]]).float()
        >>> gmm = GaussianMixture(n_components=2, seed=0)
        >>> gmm.fit(data)
        >>> gmm.score_samples(data).round(decimals=4)
        tensor([3.8295, 4.5795, 3.8295, 3.8295, 4.5795, 3.8295])
    """

    def __init__(
        self,
        n_components: int,
        n_iter: int = 100,
        tol: float = 1e-3,
        *,
        seed: int | torch.Generator | None = None,
        reg_covar: float = 1e-6,
    ) -> None:
        super().__init__()
        if not _is_int(n_components) or n_components <= 0:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        n_components = operator.index(n_components)
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.n_components = n_components
        self.n_iter = int(n_iter)
        self.tol = float(tol)
        self.seed = seed
        self.reg_covar = float(reg_covar)

        # Empty until fit; DynamicBufferMixin resizes them when a checkpoint is loaded.
        self.register_buffer("means", torch.empty(0))
        self.register_buffer("covariances", torch.empty(0))
        self.register_buffer("weights", torch.empty(0))

        self.converged_: bool = False
        self.n_iter_: int = 0
        self.mean_log_likelihood_: float = float("nan")

    # ------------------------------------------------------------------ helpers
    @property
    def is_fitted(self) -> bool:
        return self.means.numel() > 0

    def _check_fitted_input(self, data: torch.Tensor, who: str) -> None:
        n_features = self.means.shape[1] if self.is_fitted else 0
        check_fitted_rows(self.is_fitted, data, n_features, f"GaussianMixture.{who}", "fit(data)")

    @staticmethod
    def _log_gaussians(x: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
        """log N(x_i | mu_k, Sigma_k) for every point and component -> (N, K)."""
        n_features = x.shape[1]
        chol = torch.linalg.cholesky(covariances)  # (K, D, D), Sigma_k = L_k L_k^T
        mahalanobis_sq = _squared_mahalanobis(x, means, chol)  # (K, N)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)  # (K,)
        log_prob = -0.5 * (n_features * math.log(2 * math.pi) + log_det[:, None] + mahalanobis_sq)
        return log_prob.T  # (N, K)

    def _weighted_log_probs(
        self, x: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """log pi_k + log N(x_i | mu_k, Sigma_k) -> (N, K)."""
        return self._log_gaussians(x, means, covariances) + torch.log(weights)[None, :]

    def _m_step(self, x: torch.Tensor, resp: torch.Tensor):
        """Weights, means and covariances from responsibilities ``resp`` (N, K)."""
        n_points, n_features = x.shape
        # A tiny floor avoids 0/0 should a component lose all its points.
        counts = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps  # (K,)
        weights = counts / n_points  # (K,)
        means = resp.T @ x / counts[:, None]  # (K, D)
        diff = x.unsqueeze(0) - means.unsqueeze(1)  # (K, N, D)
        weighted = diff * resp.T.unsqueeze(-1)  # (K, N, D): r_ik (x_i - mu_k)
        covariances = weighted.transpose(1, 2) @ diff / counts[:, None, None]  # (K, D, D)
        eye = torch.eye(n_features, dtype=x.dtype, device=x.device)
        covariances = covariances + self.reg_covar * eye
        return means, covariances, weights

    # ------------------------------------------------------------------ public API
    def fit(self, data: torch.Tensor) -> None:
        """Fit the mixture to ``data`` (N, D) by EM."""
        check_2d_finite(data, "GaussianMixture.fit")
        n_points = data.shape[0]
        if self.n_components > n_points:
            raise ValueError(f"n_components={self.n_components} is larger than the number of points N={n_points}")
        out_dtype = data.dtype if data.is_floating_point() else torch.get_default_dtype()
        x = data.to(torch.float64)  # (N, D)

        # Start: hard KMeans labels as responsibilities, then one M-step.
        labels, _ = KMeans(n_clusters=self.n_components, seed=self.seed).fit(x)
        resp = F.one_hot(labels, self.n_components).to(x.dtype)  # (N, K)
        means, covariances, weights = self._m_step(x, resp)

        previous = -math.inf
        self.converged_ = False
        change = math.inf
        for iteration in range(1, self.n_iter + 1):
            # E-step: log responsibilities, normalised with logsumexp.
            weighted = self._weighted_log_probs(x, means, covariances, weights)  # (N, K)
            log_norm = torch.logsumexp(weighted, dim=1, keepdim=True)  # (N, 1)
            resp = torch.exp(weighted - log_norm)  # (N, K)
            mean_log_likelihood = float(log_norm.mean())
            # M-step.
            means, covariances, weights = self._m_step(x, resp)

            change = abs(mean_log_likelihood - previous)
            previous = mean_log_likelihood
            self.n_iter_ = iteration
            if change < self.tol:
                self.converged_ = True
                break

        if not self.converged_:
            warnings.warn(
                f"GaussianMixture did not converge in n_iter={self.n_iter} iterations "
                f"(last change of the mean log-likelihood {change:.3g} >= tol={self.tol}); "
                "raise n_iter or tol",
                RuntimeWarning,
                stacklevel=2,
            )
        self.mean_log_likelihood_ = previous
        self.means = means.to(out_dtype)
        self.covariances = covariances.to(out_dtype)
        self.weights = weights.to(out_dtype)

    def _fitted_log_probs(self, data: torch.Tensor) -> torch.Tensor:
        x = data.to(device=self.means.device, dtype=torch.float64)
        return self._weighted_log_probs(
            x, self.means.double(), self.covariances.double(), self.weights.double()
        )  # (N, K)

    def score_samples(self, data: torch.Tensor) -> torch.Tensor:
        """Log-likelihood log p(x_i) of each row of ``data`` (N, D) -> (N,)."""
        self._check_fitted_input(data, "score_samples")
        scores = torch.logsumexp(self._fitted_log_probs(data), dim=1)  # (N,)
        return scores.to(data.dtype if data.is_floating_point() else self.means.dtype)

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        """Most responsible component for each row of ``data`` (N, D) -> (N,) int64."""
        self._check_fitted_input(data, "predict")
        # argmax of the responsibilities = argmax of log pi_k + log N_k (same normaliser per row).
        return self._fitted_log_probs(data).argmax(dim=1)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        """Same as `score_samples`."""
        return self.score_samples(data)
