"""`PCA`: principal component analysis in plain torch
(reference: ``anomalib.models.components.dimensionality_reduction.PCA``).

PCA finds the orthogonal directions along which centred data varies most. With the thin SVD of
the centred data matrix

    X - mean = U · S · Vᵀ          X: (N, D),  U: (N, r),  S: (r,),  V: (D, r),  r = min(N, D)

the columns of V are the principal directions, S²/(N-1) the variance along each, and

    transform(x)         = (x - mean) @ V_k                  # (N, D) -> (N, k)
    inverse_transform(z) = z @ V_kᵀ + mean                   # (N, k) -> (N, D)

``n_components`` is either an ``int`` (keep exactly k directions) or a ``float`` in (0, 1]: keep the
fewest directions whose cumulative explained-variance ratio ``cumsum(S²) / sum(S²)`` reaches it.
DFM uses ratio mode (0.97) and scores images by the reconstruction error
``‖x - inverse_transform(transform(x))‖²``.

Deliberate deviations from anomalib's reference (all four are documented quirks, fixed on purpose):

* **Ratio mode picks the minimal k** that reaches the ratio. The reference uses the 0-based index
  of that position, i.e. one component fewer (and 0 components when the first one is enough).
* **``fit_transform`` honours ratio mode.** The reference treats ``n_components`` as an int there.
* **``inverse_transform`` adds the mean back**, so it really inverts ``transform`` on the kept
  subspace. The reference does not.
* **``transform`` never mutates its input.** The reference subtracts the mean in place from the
  caller's tensor (DFM's score relied on that quirk cancelling the previous one).

Other choices: the SVD runs in float64 for accuracy (buffers are then stored in the input's float
dtype); the sign of every direction is fixed (largest-magnitude entry positive) so results are
reproducible; ``int`` vs ``float`` decides the mode, so ``PCA(1)`` keeps one component while
``PCA(1.0)`` keeps all the variance.
"""

from __future__ import annotations

import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin, NotFittedError


class PCA(DynamicBufferMixin):
    """Principal component analysis with fitted statistics kept as (resizable) buffers.

    Args:
        n_components: ``int >= 1`` for a fixed number of components, or ``float`` in (0, 1] for the
            share of variance to keep (the minimal number of components reaching it).

    Buffers (empty until ``fit``): ``singular_vectors (D, k)``, ``singular_values (k,)``,
    ``mean (D,)``, ``num_components`` (0-d int64).

    Example:
        >>> pca = PCA(n_components=2)
        >>> z = pca.fit_transform(torch.rand(1000, 5))          # (1000, 2)
        >>> pca.inverse_transform(z).shape                      # (1000, 5)
    """

    def __init__(self, n_components: int | float) -> None:
        super().__init__()
        self.n_components = _check_n_components(n_components)
        self.register_buffer("singular_vectors", torch.empty(0))
        self.register_buffer("singular_values", torch.empty(0))
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("num_components", torch.tensor(0, dtype=torch.int64))

    # ------------------------------------------------------------------ fitting
    def fit(self, dataset: torch.Tensor) -> PCA:
        """Fit the principal directions of ``dataset (N, D)``; returns ``self``."""
        data = _check_matrix(dataset, "dataset")
        num_samples, num_features = data.shape
        store_dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32

        # Step 1: centre the data (float64 so the SVD is accurate even for float32 features).
        data64 = data.to(torch.float64)
        mean = data64.mean(dim=0)  # (D,)
        centred = data64 - mean  # (N, D)

        # Step 2: thin SVD. Rows of vh are the principal directions, sorted by singular value.
        _, singular_values, vh = torch.linalg.svd(centred, full_matrices=False)  # S: (r,), vh: (r, D)

        # Step 3: how many directions to keep.
        k = self._choose_k(singular_values, num_samples, num_features)

        # Step 4: fix each direction's sign (largest-magnitude entry positive): SVD signs are
        # arbitrary, and a fixed convention makes fits reproducible across devices and runs.
        vectors = vh[:k].T  # (D, k)
        pivot = vectors.abs().argmax(dim=0)  # (k,)
        signs = torch.sign(vectors[pivot, torch.arange(k, device=vectors.device)])
        signs[signs == 0] = 1.0
        vectors = vectors * signs  # (D, k)

        self.singular_vectors = vectors.to(store_dtype)
        self.singular_values = singular_values[:k].to(store_dtype)
        self.mean = mean.to(store_dtype)
        self.num_components = torch.tensor(k, dtype=torch.int64, device=data.device)
        return self

    def _choose_k(self, singular_values: torch.Tensor, num_samples: int, num_features: int) -> int:
        max_k = min(num_samples, num_features)
        if isinstance(self.n_components, int):
            if self.n_components > max_k:
                raise ValueError(
                    f"n_components={self.n_components} is larger than min(N, D) = "
                    f"min({num_samples}, {num_features}) = {max_k}: PCA can find at most that many "
                    f"directions. Use n_components <= {max_k}, give more samples, or pass a float "
                    f"in (0, 1] to keep a share of the variance instead."
                )
            return self.n_components

        # Ratio mode: the minimal k whose cumulative explained-variance ratio reaches the target.
        variance = singular_values**2  # (r,)
        total = variance.sum()
        if total <= 0:
            raise ValueError(
                "PCA with a variance ratio needs data that varies, but every sample is identical "
                "(total variance 0). Pass an int n_components or use more varied data."
            )
        cumulative_ratio = torch.cumsum(variance, dim=0) / total  # (r,)
        # Number of positions still below the target, plus one = first position reaching it.
        # (The reference returns that position's 0-based index, one component too few.)
        k = int((cumulative_ratio < self.n_components).sum().item()) + 1
        return min(k, singular_values.numel())

    # ------------------------------------------------------------------ projecting
    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``features (N, D)`` onto the kept directions -> ``(N, k)``. Input is untouched."""
        self._check_fitted()
        features = _check_matrix(features, "features", expected_dim=self.mean.numel())
        mean, vectors = self._buffers_like(features)
        return (features - mean) @ vectors  # (N, k), a new tensor

    def fit_transform(self, dataset: torch.Tensor) -> torch.Tensor:
        """``fit(dataset)`` then ``transform(dataset)``; honours ratio mode -> ``(N, k)``."""
        return self.fit(dataset).transform(dataset)

    def inverse_transform(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``features (N, k)`` back to the input space ``(N, D)``, adding the mean back."""
        self._check_fitted()
        k = int(self.num_components)
        features = _check_matrix(features, "features", expected_dim=k)
        mean, vectors = self._buffers_like(features)
        return features @ vectors.T + mean  # (N, D)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`transform`."""
        return self.transform(features)

    # ------------------------------------------------------------------ helpers
    @property
    def is_fitted(self) -> bool:
        return int(self.num_components) > 0

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                "This PCA is not fitted yet: call pca.fit(data) (data: (N, D)) or load a fitted state dict first."
            )

    def _buffers_like(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Device and dtype follow the input, so a CPU-fitted PCA works on CUDA tensors and back.
        dtype = features.dtype if features.is_floating_point() else self.mean.dtype
        return (self.mean.to(features.device, dtype), self.singular_vectors.to(features.device, dtype))

    def extra_repr(self) -> str:
        fitted = f", fitted: D={self.mean.numel()} -> k={int(self.num_components)}" if self.is_fitted else ""
        return f"n_components={self.n_components}{fitted}"


def _check_n_components(n_components) -> int | float:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, float)):
        raise TypeError(
            f"n_components must be an int (number of components) or a float in (0, 1] "
            f"(share of variance), got {n_components!r}"
        )
    if isinstance(n_components, float):
        if not 0.0 < n_components <= 1.0:
            raise ValueError(
                f"a float n_components is a share of explained variance and must lie in "
                f"(0, 1], got {n_components}. For a fixed count pass an int."
            )
        return float(n_components)
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    return int(n_components)


def _check_matrix(x, name: str, expected_dim: int | None = None) -> torch.Tensor:
    """Validate a 2-D, non-empty, finite matrix; returns it (floating, never modified)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one sample and one feature")
    if expected_dim is not None and x.shape[1] != expected_dim:
        raise ValueError(
            f"{name} has {x.shape[1]} columns but this PCA expects {expected_dim} (shape (N, {expected_dim}))"
        )
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; clean or impute them before PCA")
    return x
