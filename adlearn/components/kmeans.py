"""`KMeans`: Lloyd's algorithm in plain torch
(reference: ``anomalib.models.components.cluster.KMeans``).

Idea
----
Split N points into K clusters so that every point is close to its cluster's centre. Lloyd's
algorithm alternates two steps that each lower the *inertia* (sum of squared distances from points
to their centre)::

    assign:  label_i = argmin_k ||x_i - mu_k||^2
    update:  mu_k    = mean of the points with label k     (an empty cluster keeps its centre)

It converges to a local minimum, so the starting centres matter.

Defaults (as anomalib v1): ``n_clusters`` required, ``max_iter=10``, random initial centres.
`GaussianMixture` uses it to initialise EM.

Deliberate differences from anomalib's `KMeans`
-----------------------------------------------
* ``fit`` raises ``ValueError`` when ``n_clusters <= 0`` (documented by anomalib but missing from
  its v1.0.1 source) and when ``n_clusters`` exceeds the number of points.
* ``init="random"`` draws *distinct* rows; the reference draws with replacement, so two starting
  centres can coincide and one cluster then stays empty for ever. ``init="k-means++"`` (Arthur &
  Vassilvitskii, 2007) is offered as an option; the default stays ``"random"`` like the reference.
* The loop stops early once no label changes: the next iterations would repeat the same step, so
  the result is identical to running all ``max_iter`` iterations. ``labels_`` are the assignment
  to the *final* centres (the reference returns the assignment made before its last update).
* ``predict`` before ``fit`` raises `KMeansNotFittedError`, which is both adlearn's
  `NotFittedError` and an ``AttributeError`` (the reference's exception type).
* ``seed`` (int or ``torch.Generator``) makes the start reproducible; ``None`` uses torch's global
  random state, as the reference does.
"""

from __future__ import annotations

import operator

import torch

from adlearn.components.dynamic_buffer import NotFittedError

__all__ = ["KMeans", "KMeansNotFittedError"]


class KMeansNotFittedError(NotFittedError, AttributeError):
    """`predict` was called before `fit` (catchable as NotFittedError or AttributeError)."""


def _make_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for the random start; None means torch's global random state."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def _is_int(value) -> bool:
    """True for Python / numpy / torch integers (not bools)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_2d_finite(inputs: torch.Tensor, who: str) -> None:
    """Clear errors for the inputs a clustering/density component cannot use."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape (N, D), got {type(inputs).__name__}")
    if inputs.dim() != 2:
        raise ValueError(f"{who} expects a tensor of shape (N, D), got shape {tuple(inputs.shape)}")
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(f"{who} got an empty tensor of shape {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError(f"{who} got NaN or infinite values")


class KMeans:
    """K-means clustering (Lloyd's algorithm).

    Args:
        n_clusters: number of clusters K.
        max_iter: maximum number of assign/update rounds (default 10, as anomalib).
        init: ``"random"`` (K distinct rows, default) or ``"k-means++"``.
        seed: int or ``torch.Generator`` for the random start; ``None`` uses the global RNG.

    After ``fit``: ``labels_`` (N,), ``cluster_centers_`` (K, D), ``inertia_`` (float) and
    ``n_iter_`` (rounds actually run).

    Example:
        >>> x = torch.tensor([[0., 0.], [0., 1.], [10., 10.], [10., 11.]])
        >>> labels, centers = KMeans(n_clusters=2, seed=0).fit(x)
        >>> sorted(centers[:, 0].tolist())
        [0.0, 10.0]
    """

    INITS = ("random", "k-means++")

    def __init__(
        self, n_clusters: int, max_iter: int = 10, init: str = "random", seed: int | torch.Generator | None = None
    ) -> None:
        if init not in self.INITS:
            raise ValueError(f"init must be one of {self.INITS}, got {init!r}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.n_clusters = n_clusters
        self.max_iter = int(max_iter)
        self.init = init
        self.generator = _make_generator(seed)
        self.labels_: torch.Tensor | None = None
        self.cluster_centers_: torch.Tensor | None = None
        self.inertia_: float | None = None
        self.n_iter_: int = 0

    def __repr__(self) -> str:
        return f"KMeans(n_clusters={self.n_clusters}, max_iter={self.max_iter}, init={self.init!r})"

    # ------------------------------------------------------------------ initialisation
    def _random_init(self, inputs: torch.Tensor) -> torch.Tensor:
        """K distinct rows chosen uniformly at random."""
        rows = torch.randperm(inputs.shape[0], generator=self.generator)[: self.n_clusters]
        return inputs[rows.to(inputs.device)].clone()  # (K, D)

    def _kmeans_plus_plus_init(self, inputs: torch.Tensor) -> torch.Tensor:
        """k-means++: each next centre is drawn with probability ∝ squared distance to the
        nearest centre already chosen, which spreads the start over the data."""
        n_points = inputs.shape[0]
        first = torch.randint(n_points, (1,), generator=self.generator)
        centers = [inputs[first.to(inputs.device)]]  # list of (1, D)
        closest_sq = torch.cdist(inputs, centers[0]).squeeze(1).pow(2)  # (N,)
        for _ in range(1, self.n_clusters):
            weights = closest_sq.double().cpu()  # the sampling runs on the CPU generator
            if weights.sum() <= 0:  # every point already sits on a centre: pick uniformly
                weights = torch.ones_like(weights)
            nxt = torch.multinomial(weights, 1, generator=self.generator)
            centers.append(inputs[nxt.to(inputs.device)])
            new_sq = torch.cdist(inputs, centers[-1]).squeeze(1).pow(2)  # (N,)
            closest_sq = torch.minimum(closest_sq, new_sq)
        return torch.cat(centers).clone()  # (K, D)

    # ------------------------------------------------------------------ Lloyd iterations
    @staticmethod
    def _assign(inputs: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        return torch.cdist(inputs, centers).argmin(dim=1)  # (N,)

    @staticmethod
    def _update(inputs: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Move each non-empty cluster's centre to the mean of its members."""
        n_clusters = centers.shape[0]
        sums = torch.zeros_like(centers).index_add_(0, labels, inputs)  # (K, D)
        counts = torch.bincount(labels, minlength=n_clusters).to(inputs.dtype)  # (K,)
        non_empty = counts > 0
        new_centers = centers.clone()
        new_centers[non_empty] = sums[non_empty] / counts[non_empty, None]
        return new_centers

    def fit(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster ``inputs`` (N, D); returns ``(labels (N,), cluster_centers (K, D))``."""
        check_2d_finite(inputs, "KMeans.fit")
        n_points = inputs.shape[0]
        if not _is_int(self.n_clusters):
            raise ValueError(f"n_clusters must be an int, got {self.n_clusters!r}")
        self.n_clusters = operator.index(self.n_clusters)
        if self.n_clusters <= 0:
            raise ValueError(f"n_clusters must be > 0, got {self.n_clusters}")
        if self.n_clusters > n_points:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of points N={n_points}")
        inputs = inputs.float() if not inputs.is_floating_point() else inputs

        if self.init == "random":
            centers = self._random_init(inputs)
        else:
            centers = self._kmeans_plus_plus_init(inputs)

        labels = self._assign(inputs, centers)
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            centers = self._update(inputs, labels, centers)
            new_labels = self._assign(inputs, centers)
            self.n_iter_ += 1
            if torch.equal(new_labels, labels):  # a fixed point: further rounds change nothing
                break
            labels = new_labels
        labels = new_labels

        self.labels_ = labels
        self.cluster_centers_ = centers
        self.inertia_ = float((inputs - centers[labels]).pow(2).sum())
        return labels, centers

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Index of the nearest fitted centre for each row of ``inputs`` (N, D) -> (N,)."""
        if self.cluster_centers_ is None:
            raise KMeansNotFittedError("KMeans is not fitted yet: call fit(inputs) first")
        if inputs.dim() != 2 or inputs.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(
                f"KMeans.predict expects shape (N, {self.cluster_centers_.shape[1]}), got {tuple(inputs.shape)}"
            )
        centers = self.cluster_centers_.to(device=inputs.device)
        return self._assign(inputs.to(centers.dtype), centers)
