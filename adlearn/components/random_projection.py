"""`SparseRandomProjection`: distance-preserving random projection
(reference: ``anomalib.models.components.dimensionality_reduction.SparseRandomProjection``).

The Johnson–Lindenstrauss (JL) lemma says N points can be mapped to

    k = floor( 4 · ln(N) / (eps²/2 − eps³/3) )

dimensions by a random linear map while every pairwise squared distance stays within a factor
(1 ± eps). k depends only on N and eps, not on the input width D (so it can even be *wider* than
the input: 1000 points with eps=0.1 give k=5920).

The map is a sparse ±1 matrix (Achlioptas / Li et al.): with density s = 1/√D each entry of the
(k, D) matrix R is

    +√(1/s)/√k   with probability s/2
     0           with probability 1 − s
    −√(1/s)/√k   with probability s/2

and ``transform(x) = x @ Rᵀ``. E[Rᵀ R] = I, so squared lengths are preserved on average.

Defaults follow anomalib (eps=0.1, random_state=None). It is a plain object, not an ``nn.Module``.
Building the matrix: the reference loops over the k rows, drawing nnz ~ Binomial(D, s) and then
nnz distinct columns. Drawing every entry independently (non-zero with probability s) gives
exactly the same distribution — a row's count is Binomial(D, s) and, given the count, the columns
are a uniform subset — so we build the whole matrix in one vectorised step. ``n_components`` is an
optional override of the JL dimension (KCenterGreedy uses it for a fixed projection width).
"""

from __future__ import annotations

import math

import torch

from adlearn.components.dynamic_buffer import NotFittedError


def johnson_lindenstrauss_min_dim(n_samples: int, eps: float) -> int:
    """Smallest safe projection width for ``n_samples`` points and distortion ``eps`` (JL bound)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    denominator = eps**2 / 2 - eps**3 / 3
    return int(4 * math.log(n_samples) / denominator)


class SparseRandomProjection:
    """Project ``(N, D)`` features to ``k`` dimensions with a sparse random ±1 matrix.

    Args:
        eps: distortion tolerance in the JL bound, in (0, 1). Smaller is more faithful but wider.
        random_state: seed for the matrix. ``None`` draws one from torch's global generator, so
            ``torch.manual_seed`` makes runs reproducible.
        n_components: optional fixed output width; overrides the JL dimension.

    After ``fit``: ``components (k, D)`` (the matrix R), ``num_components``, ``density``.
    """

    def __init__(self, eps: float = 0.1, random_state: int | None = None, n_components: int | None = None) -> None:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        if n_components is not None and (isinstance(n_components, bool) or int(n_components) < 1):
            raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
        self.eps = eps
        self.random_state = random_state
        self.n_components = None if n_components is None else int(n_components)
        self.components: torch.Tensor | None = None  # (k, D) after fit
        self.num_components: int | None = None
        self.density: float | None = None

    def fit(self, embedding: torch.Tensor) -> SparseRandomProjection:
        """Build the random matrix for ``embedding (N, D)`` (only its shape is used); returns self."""
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.numel() == 0:
            shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f"embedding must be a non-empty 2-D tensor (N, D), got {shape}")
        num_samples, num_features = embedding.shape

        # Step 1: output width from the JL bound (or the caller's override).
        k = self.n_components or johnson_lindenstrauss_min_dim(num_samples, self.eps)

        # Step 2: density 1/√D (D = 1 gives density 1, i.e. a dense ±1 matrix).
        density = 1.0 / math.sqrt(num_features)

        # Step 3: every entry is non-zero with probability `density`, with a random sign.
        generator = torch.Generator()
        seed = self.random_state if self.random_state is not None else int(torch.randint(0, 2**62, (1,)).item())
        generator.manual_seed(seed)
        nonzero = torch.rand(k, num_features, generator=generator) < density  # (k, D)
        signs = torch.randint(0, 2, (k, num_features), generator=generator) * 2 - 1  # (k, D) ±1

        # Step 4: scale so that E[RᵀR] = I (squared lengths preserved on average).
        scale = math.sqrt(1.0 / density) / math.sqrt(k)
        matrix = torch.where(nonzero, signs.to(torch.float32) * scale, torch.zeros(()))  # (k, D)

        self.components = matrix.to(embedding.device)
        self.num_components = k
        self.density = density
        return self

    def transform(self, embedding: torch.Tensor) -> torch.Tensor:
        """Project ``embedding (N, D)`` -> ``(N, k)``."""
        if self.components is None:
            raise NotFittedError(
                "SparseRandomProjection is not fitted yet: call .fit(embedding) before .transform(...)"
            )
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2:
            raise ValueError("embedding must be a 2-D tensor (N, D)")
        if embedding.shape[1] != self.components.shape[1]:
            raise ValueError(
                f"embedding has {embedding.shape[1]} features but the projection was "
                f"fitted for {self.components.shape[1]} (expected shape (N, "
                f"{self.components.shape[1]}))"
            )
        dtype = embedding.dtype if embedding.is_floating_point() else torch.float32
        matrix = self.components.to(embedding.device, dtype)  # (k, D)
        return embedding.to(dtype) @ matrix.T  # (N, k)

    def fit_transform(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fit(embedding).transform(embedding)

    def __repr__(self) -> str:
        fitted = f", fitted: {self.components.shape[1]} -> {self.num_components}" if self.components is not None else ""
        return f"SparseRandomProjection(eps={self.eps}, random_state={self.random_state}{fitted})"
