"""`GaussianKDE`: Gaussian kernel density estimation
(reference: ``anomalib.models.components.stats.GaussianKDE``).

Idea
----
Put a small Gaussian "bump" on every training point x_i and average them::

    p(q) = 1/N sum_i N(q | x_i, H),        H = h^2 * Sigma

Sigma is the (unbiased) covariance of the data, so the bumps have the data's shape, and h is
Scott's rule-of-thumb bandwidth factor  h = N^(-1/(D+4))  (more data -> narrower bumps).

To evaluate it cheaply we *whiten*: with P = H^-1 and its Cholesky factor L (P = L L^T),
(q - x)^T P (q - x) = ||qL - xL||^2. So we store the whitened data xL once, and

    p(q) = norm * mean_i exp(-1/2 ||qL - x_iL||^2),   norm = prod(diag L) * (2 pi)^(-D/2)

(prod(diag L) = sqrt(det P)). This is exactly ``scipy.stats.gaussian_kde`` with its default
("scott") bandwidth. DFKDE fits it on 16 PCA components of CNN features (via `KDEClassifier`).

Deliberate differences from anomalib's `GaussianKDE`
----------------------------------------------------
* ``GaussianKDE(dataset)`` really fits at construction (in anomalib v1.0.1 this path is broken:
  ``fit`` runs before the buffers are registered).
* The static ``cov`` does not modify its argument (the reference subtracts the mean in place).
* ``forward`` is vectorised over queries and processed in chunks (the reference loops over the
  queries one at a time in Python); the result is the same.
* ``log_density`` uses ``logsumexp``, so it stays finite far from the data. (The reference takes
  ``log(density + 1e-300)``; in float32 1e-300 rounds to 0, so it returns -inf there.)
* The bandwidth matrix is computed in float64 and stored in the dataset's dtype; a singular
  covariance (at most D points, a constant or linearly dependent feature; numerically: smallest
  eigenvalue <= 1e-12 x largest) raises a ``ValueError`` that says so, instead of a bare
  linear-algebra error or a silently degenerate kernel.
"""

from __future__ import annotations

import math

import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin, check_fitted_rows
from adlearn.components.kmeans import check_2d_finite

__all__ = ["GaussianKDE"]

# Smallest / largest covariance eigenvalue below which the data counts as singular: a direction
# whose spread is a million times smaller than the largest one is float32 rounding noise.
SINGULAR_RATIO = 1e-12


class GaussianKDE(DynamicBufferMixin):
    """Gaussian KDE with Scott's bandwidth.

    Args:
        dataset: optional (N, D) tensor; when given the estimator is fitted on it at once.
        chunk_elements: keyword only; how many query-by-point distances are held in memory at a
            time (default 2**22, i.e. 16 MiB in float32).

    Buffers after ``fit``: ``bw_transform`` L (D, D), ``dataset`` whitened data (N, D),
    ``norm`` (scalar).

    Example:
        >>> kde = GaussianKDE(torch.randn(500, 2))
        >>> kde(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, dataset: torch.Tensor | None = None, *, chunk_elements: int = 2**22) -> None:
        super().__init__()
        self.chunk_elements = int(chunk_elements)
        # Buffers first, so fitting at construction works (and checkpoints can resize them).
        self.register_buffer("bw_transform", torch.empty(0))
        self.register_buffer("dataset", torch.empty(0))
        self.register_buffer("norm", torch.empty(0))
        if dataset is not None:
            self.fit(dataset)

    # ------------------------------------------------------------------ fitting
    @staticmethod
    def cov(tensor: torch.Tensor) -> torch.Tensor:
        """Unbiased covariance of ``tensor`` (D, N): rows are variables, columns observations
        (like ``numpy.cov``). Returns (D, D). The argument is not modified."""
        centred = tensor - tensor.mean(dim=1, keepdim=True)  # a new tensor, not in place
        return centred @ centred.T / (tensor.shape[1] - 1)

    @property
    def is_fitted(self) -> bool:
        return self.dataset.numel() > 0

    def fit(self, dataset: torch.Tensor) -> None:
        """Fit on ``dataset`` (N, D): whitening transform, whitened data and normaliser."""
        check_2d_finite(dataset, "GaussianKDE.fit")
        n_points, n_features = dataset.shape
        if n_points < 2:
            raise ValueError(f"GaussianKDE.fit needs at least 2 points to estimate a covariance, got N={n_points}")
        out_dtype = dataset.dtype if dataset.is_floating_point() else torch.get_default_dtype()
        data = dataset.to(torch.float64)  # (N, D)

        factor = n_points ** (-1.0 / (n_features + 4))  # Scott's rule
        covariance = self.cov(data.T)  # (D, D)
        singular = ValueError(
            f"GaussianKDE.fit: the covariance of the data is singular (N={n_points} points, "
            f"D={n_features} dims); it needs more points than dimensions and no constant or "
            "linearly dependent features"
        )
        # Rank check first: a rank-deficient covariance can still slip through inv + Cholesky
        # with rounding noise and give a meaningless, nearly flat kernel in some direction.
        eigenvalues = torch.linalg.eigvalsh(covariance)  # ascending, (D,)
        if eigenvalues[-1] <= 0 or eigenvalues[0] <= SINGULAR_RATIO * eigenvalues[-1]:
            raise singular
        kernel_covariance = covariance * factor**2  # H = h^2 Sigma
        try:
            precision = torch.linalg.inv(kernel_covariance)  # P = H^-1
            bw_transform = torch.linalg.cholesky(precision)  # (D, D), P = L L^T
        except RuntimeError as error:  # torch raises LinAlgError (a RuntimeError)
            raise singular from error

        norm = torch.diagonal(bw_transform).prod() * (2 * math.pi) ** (-n_features / 2)
        self.bw_transform = bw_transform.to(out_dtype)
        self.dataset = (data @ bw_transform).to(out_dtype)  # whitened points, (N, D)
        self.norm = norm.to(out_dtype)

    # ------------------------------------------------------------------ evaluation
    def log_density(self, features: torch.Tensor) -> torch.Tensor:
        """log p(q) for each row of ``features`` (M, D) -> (M,), stable far from the data."""
        check_fitted_rows(
            self.is_fitted, features, self.bw_transform.shape[0], "GaussianKDE.log_density", "fit(dataset)"
        )
        n_points = self.dataset.shape[0]
        whitened = features.to(self.bw_transform.dtype) @ self.bw_transform  # (M, D)
        chunk = max(1, self.chunk_elements // n_points)  # queries per chunk
        log_norm = torch.log(self.norm) - math.log(n_points)  # log(norm / N)
        pieces = []
        for start in range(0, whitened.shape[0], chunk):
            queries = whitened[start : start + chunk]  # (m, D)
            # Exact pairwise distances (not the |a|^2+|b|^2-2ab shortcut, which loses precision).
            dist_sq = torch.cdist(queries, self.dataset, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # (m, N)
            pieces.append(torch.logsumexp(-0.5 * dist_sq, dim=1) + log_norm)  # (m,)
        if not pieces:  # no queries
            return whitened.new_empty(0)
        return torch.cat(pieces)  # (M,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Density estimate p(q) for each row of ``features`` (M, D) -> (M,)."""
        return torch.exp(self.log_density(features))
