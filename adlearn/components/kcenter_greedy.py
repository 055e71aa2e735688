"""`KCenterGreedy`: PatchCore's coreset by greedy farthest-point sampling.

The k-center problem (Gonzalez 1985) asks for the m rows C of an embedding ``(N, D)`` that minimise the
coverage radius ``r(C) = max_i min_{c ∈ C} ‖x_i − c‖`` (`coverage_radius`). Gonzalez's greedy rule — start
anywhere, then add the row farthest from everything chosen so far — is within a factor 2 of the optimum;
Sener & Savarese (ICLR 2018) call its result a core-set, and PatchCore (Roth et al., CVPR 2022, Sec. 3.2,
Eq. 5, Alg. 1) shrinks its patch memory bank with it. One step (``method="greedy"`` below):

    min_dist_i ← min(min_dist_i, ‖x_i − c_new‖)  for every row i  (N,);   c_next ← argmax_i min_dist_i

As the reference (``anomalib.models.components.sampling.k_center_greedy``): ``coreset_size = int(N · ratio)``
rows, chosen on features projected by ``SparseRandomProjection(eps=0.9)``, returned from the embedding. But:

* the random start point is part of the coreset (as in anomalib 2.x; 1.x only seeded the distances);
* the projection is skipped when it would widen the features: its JL width depends on N only (≈ 290 for
  PatchCore's banks). On real 152-d bottle features (40k → 4k) projecting grew the radius: JL width +8.5 %;
* ``"dense"`` (default on accelerators) keeps the indices on the device, ``"pruned"`` and ``"adaptive"`` (default
  on CPU) skip rows the triangle inequality proves unaffected: the same rows, sooner (`kcenter_fast`).
"""

from __future__ import annotations

import warnings

import torch

from adlearn.components import kcenter_fast
from adlearn.components.kcenter_fast import coverage_radius as coverage_radius  # the objective, measured
from adlearn.components.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

METHODS = ("auto", "greedy", "dense", "pruned", "adaptive")


class KCenterGreedy:
    """Greedy k-center coreset of ``embedding (N, D)``: ``coreset_size = int(N · sampling_ratio)`` rows.

    ``project``, ``eps``, ``projection_dim``: random projection first (JL width for ``eps``, or a fixed width),
    skipped when it would not narrow the features. ``random_state`` seeds the start point and the projection
    (``None``: torch's global RNG). ``method``: ``"greedy"``, ``"dense"``, ``"pruned"``, ``"adaptive"`` or ``"auto"``
    (module docstring); ``chunk_rows``, ``switch_fraction`` tune the fast paths. Example: ``KCenterGreedy(
    torch.randn(10_000, 152), 0.1).sample_coreset()`` → ``(1000, 152)`` rows of the embedding.
    """

    def __init__(
        self,
        embedding: torch.Tensor,
        sampling_ratio: float,
        *,
        project: bool = True,
        eps: float = 0.9,
        projection_dim: int | None = None,
        random_state: int | None = None,
        method: str = "auto",
        chunk_rows: int = 65536,
        switch_fraction: float | None = None,
    ) -> None:
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or 0 in embedding.shape:
            got = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f"embedding must be a non-empty 2-D tensor (N, D): reshape (B, D, h, w) first. Got {got}")
        if not 0.0 < sampling_ratio <= 1.0 or int(len(embedding) * sampling_ratio) < 1:  # else an empty coreset
            raise ValueError(f"sampling_ratio={sampling_ratio} is outside [1/N, 1] = [{1 / len(embedding):.3g}, 1]")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if switch_fraction is not None and not 0.0 < switch_fraction <= 1.0:
            raise ValueError(f"switch_fraction must lie in (0, 1], got {switch_fraction}")
        if not torch.isfinite(embedding).all():
            raise ValueError("embedding contains NaN or inf values")
        self.embedding, self.sampling_ratio, self.random_state = embedding, sampling_ratio, random_state
        self.coreset_size = int(embedding.shape[0] * sampling_ratio)
        self.method = method if method != "auto" else "adaptive" if embedding.device.type == "cpu" else "dense"
        self.chunk_rows, self.switch_fraction = chunk_rows, switch_fraction
        # The last selection's steps of each kind {"dense": n, "pruned": n}; adaptive: (step, new kind, fraction).
        self.steps, self.switches = {}, []
        seed = random_state if random_state is not None else int(torch.randint(0, 2**62, (1,)).item())
        self._generator = torch.Generator().manual_seed(seed)

        self.features = self._selection_features(embedding, project, eps, projection_dim)  # (N, d)
        self.sq_norms = (self.features * self.features).sum(dim=1)  # (N,) ‖x‖²
        self.columns = kcenter_fast.column_major(self.features)  # (N, d), faster in a CPU matvec
        # Rounding noise of ‖x‖² − 2x·c + ‖c‖²: below it a row counts as the centre itself (exact duplicates).
        self.noise_floor = 16 * torch.finfo(self.features.dtype).eps * float(self.sq_norms.max())
        self.min_distances: torch.Tensor | None = None  # (N,) squared distance to the nearest centre
        self.start_idx = int(torch.randint(0, embedding.shape[0], (1,), generator=self._generator).item())

    def _selection_features(self, embedding, project, eps, projection_dim) -> torch.Tensor:
        features = embedding.to(torch.float64 if embedding.dtype == torch.float64 else torch.float32)
        self.projection: SparseRandomProjection | None = None
        target = (projection_dim or johnson_lindenstrauss_min_dim(max(features.shape[0], 2), eps)) if project else 0
        if 0 < target < features.shape[1]:  # only when it narrows the features
            seed = int(torch.randint(0, 2**62, (1,), generator=self._generator).item())
            self.projection = SparseRandomProjection(eps=eps, random_state=seed, n_components=target).fit(features)
            features = self.projection.transform(features)  # (N, d)
        # Centring changes no distance but shrinks ‖x‖², so ‖x‖² − 2x·c + ‖c‖² loses less precision.
        return features - features.mean(dim=0)

    def reset_distances(self) -> None:
        """Forget all centres: every row is infinitely far from the (empty) selection."""
        self.min_distances = None

    def update_distances(self, cluster_centers: list[int]) -> None:
        """Lower each row's squared distance to its nearest centre with the given new centres."""
        if self.min_distances is None:
            self.min_distances = torch.full_like(self.sq_norms, float("inf"))
        for center in cluster_centers:
            self.min_distances = torch.minimum(self.min_distances, self.squared_distances_to(center))
            self.min_distances[center] = 0.0  # a centre covers itself exactly

    def get_new_idx(self) -> int:
        """Index of the row farthest from its nearest centre: the next greedy centre."""
        if self.min_distances is None:
            raise RuntimeError("no centre yet: call update_distances([...]) first")
        return int(torch.argmax(self.min_distances).item())

    def squared_distances_to(self, center) -> torch.Tensor:
        """``‖x − c‖²`` of all rows to one centre (an int or a 1-element device tensor), ``(N,)``."""
        index = torch.as_tensor(center, device=self.features.device).view(1)
        point = self.features.index_select(0, index).squeeze(0)  # (d,)
        squared = torch.addmv(self.sq_norms, self.columns, point, alpha=-2.0)  # ‖x‖² − 2·x·c, (N,)
        squared.add_(self.sq_norms.index_select(0, index))  # + ‖c‖²
        return squared.masked_fill_(squared < self.noise_floor, 0.0)  # also clamps < 0

    def select_coreset_idxs(self, selected_idxs: list[int] | None = None) -> list[int]:
        """``coreset_size`` row indices, the first being ``start_idx``; or, given ``selected_idxs`` (earlier
        centres, seeding the distances), ``coreset_size`` new ones. Fewer (warned) only if all rows are covered."""
        preselected = list(selected_idxs or [])
        if any(not 0 <= i < self.features.shape[0] for i in preselected):
            raise ValueError(f"selected_idxs must lie in [0, {self.features.shape[0]})")
        self.reset_distances()
        self.update_distances(preselected)
        first = self.get_new_idx() if preselected else self.start_idx
        if self.method == "greedy":  # the loop itself: one host sync per step
            idxs = [first]
            self.update_distances([first])  # (N,)
            while len(idxs) < self.coreset_size and self.min_distances.max() > 0.0:  # else every row is covered
                idxs.append(self.get_new_idx())  # the row farthest from all centres
                self.update_distances(idxs[-1:])
            self.steps, self.switches = {"dense": len(idxs), "pruned": 0}, []
        elif self.method == "dense":
            idxs = kcenter_fast.select_dense(self, first)
        else:
            idxs = kcenter_fast.select_pruned(self, first, preselected, adaptive=self.method == "adaptive")
        if len(idxs) < self.coreset_size:
            message = f"the embedding has fewer distinct rows than coreset_size={self.coreset_size}: "
            warnings.warn(message + f"the {len(idxs)} returned cover them all (radius 0).", stacklevel=2)
        return idxs

    def sample_coreset(self, selected_idxs: list[int] | None = None) -> torch.Tensor:
        """The selected rows of the *original* embedding, ``(coreset_size, D)``."""
        index = torch.tensor(self.select_coreset_idxs(selected_idxs), dtype=torch.long, device=self.embedding.device)
        return self.embedding.index_select(0, index)
