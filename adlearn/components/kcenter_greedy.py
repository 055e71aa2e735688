"""`KCenterGreedy`: coreset selection by greedy farthest-point sampling (PatchCore, Roth et al.
CVPR 2022, Sec. 3.2 and Alg. 1; reference: ``anomalib.models.components.sampling.k_center_greedy``).

PatchCore keeps only a *coreset* of its patch-feature memory bank: a subset chosen so that every
patch has a selected patch nearby. The k-center problem asks for the subset C (|C| = m) that
minimises the **coverage radius**

    r(C) = max_i  min_{c ∈ C} ‖x_i − c‖,

and the greedy rule — start anywhere, then repeatedly add the point farthest from everything
selected so far — is within a factor 2 of the optimum. One step is:

    min_dist_i ← min(min_dist_i, ‖x_i − c_new‖)        for every point i      # (N,)
    c_next     ← argmax_i min_dist_i

Defaults follow anomalib: ``coreset_size = int(N · sampling_ratio)``, and the features are first
projected with ``SparseRandomProjection(eps=0.9)``; selection runs on the projected features but
the *original* rows are returned.

Deliberate deviations from anomalib's reference:

* **The random start point is part of the coreset** (it is the first index returned). anomalib
  v1.x used it only to initialise the distances and then
  selected ``coreset_size`` further points, so the start point's own neighbourhood could be left
  uncovered — a known bug, fixed upstream in anomalib 2.x (gh-3459).
* **Projection only when it narrows the features.** The JL width depends on N only (≈ 290 for
  PatchCore-sized banks), so for narrow features (e.g. efficientnet_lite0's 152) the reference
  *widens* them: slower and no more accurate. We skip the projection when its width ≥ D.
  Measured on real PatchCore features (MVTec bottle, efficientnet_lite0 blocks.2+blocks.4,
  152-d, 40k patches → 4k centres; 360-d variant with blocks.6 in brackets), the coverage radius
  in the original space grows with projection: none 18.96 [17.78]; JL width 261: +8.5 % [+9 %];
  fixed 128: +13 % [+16 %]; 64: +23 % [+16 %] (random subset of the same size: +95 %). A fixed
  low width therefore does *not* keep the radius within a few per cent and is not the default;
  ``projection_dim`` lets you choose one, ``project=False`` turns projection off.
* **Speed.** The reference recomputes ``‖x − c‖`` for all N points with a fresh (N, d)
  temporary every step (v1.x also moved the argmax to the host with ``.item()`` every step;
  2.7 keeps it on the device): ~850 s for 123k patches → 12.3k centres on 2 CPU cores.
  Here ‖x‖² is precomputed and the features centred, and:

  - ``method="dense"`` (default on accelerators): one matrix-vector product per step,
    ``‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²``, minimum and argmax stay on the device, indices are
    collected in a device tensor and moved to the host once at the end — no per-step sync.
  - ``method="pruned"``: the same selection, but using the triangle inequality
    to skip points that cannot move closer. Each point remembers its nearest centre a; if
    ‖a − c_new‖ ≥ 2·min_dist then ‖x − c_new‖ ≥ ‖a − c_new‖ − ‖x − a‖ ≥ min_dist, so x is
    unaffected. Only the remaining candidates (typically 1–3 % of the points on clustered
    features such as PatchCore's once the coreset has a few hundred centres) get a distance,
    with the same expansion formula. A step then costs O(#centres · d + N + #candidates · d)
    instead of O(N · d) memory traffic; the many small ops run on one thread. It needs a host
    sync per step (the candidate count), so accelerators use "dense".
  - ``method="adaptive"`` (default on CPU): pruning only pays while few points are candidates.
    On random high-dimensional data (distances concentrate) nearly every point stays a
    candidate, and a pruned step on one thread is then *slower* than one dense matvec on all
    threads (the reference does the latter). So each step is dense (all threads) or pruned
    (one thread), chosen from the candidate fraction observed as the selection proceeds — see
    `_Switch`. ``sampler.steps`` and ``sampler.switches`` tell what was chosen.

  Both methods pick the same points as a brute-force greedy up to floating-point ties
  (the reference tests check it). Measured speed-ups: see benchmarks/bench_kcenter_greedy.py.
"""

from __future__ import annotations

import warnings

import torch

from adlearn.components.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim


class KCenterGreedy:
    """Greedy k-center coreset of an embedding.

    Args:
        embedding: ``(N, D)`` features (e.g. PatchCore patch embeddings).
        sampling_ratio: coreset size / N, in (0, 1]. ``coreset_size = int(N · sampling_ratio)``.
        project: random-project before selecting (the reference does, with ``eps=0.9``). Skipped
            automatically when the projection would not reduce the width.
        eps: JL distortion for the projection width (0.9 as the reference).
        projection_dim: fixed projection width instead of the JL width.
        random_state: seed for the start point and the projection (``None``: torch's global RNG).
        method: ``"auto"`` (``"adaptive"`` on CPU, ``"dense"`` elsewhere), ``"adaptive"``,
            ``"dense"`` or ``"pruned"`` (see the module docstring).
        chunk_rows: rows per chunk when gathering candidate rows (bounds temporary memory).
        switch_fraction: adaptive only: the candidate fraction above which a dense step beats a
            pruned one (default 0.4 / torch threads; see `_Switch`).

    Example:
        >>> sampler = KCenterGreedy(torch.randn(10_000, 152), sampling_ratio=0.1)
        >>> coreset = sampler.sample_coreset()          # (1000, 152): rows of the embedding
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
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2:
            shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(
                f"embedding must be a 2-D tensor (N, D); reshape (B, D, h, w) maps to (B·h·w, D) first. Got {shape}"
            )
        if embedding.shape[0] == 0 or embedding.shape[1] == 0:
            raise ValueError(f"embedding is empty (shape {tuple(embedding.shape)})")
        if not 0.0 < sampling_ratio <= 1.0:
            raise ValueError(f"sampling_ratio must lie in (0, 1], got {sampling_ratio}")
        if method not in ("auto", "adaptive", "dense", "pruned"):
            raise ValueError(f"method must be 'auto', 'adaptive', 'dense' or 'pruned', got {method!r}")
        if switch_fraction is not None and not 0.0 < switch_fraction <= 1.0:
            raise ValueError(f"switch_fraction must lie in (0, 1], got {switch_fraction}")
        num_samples = embedding.shape[0]
        self.coreset_size = int(num_samples * sampling_ratio)
        if self.coreset_size < 1:
            raise ValueError(
                f"sampling_ratio={sampling_ratio} of N={num_samples} rows gives an "
                f"empty coreset; use sampling_ratio >= {1 / num_samples:.3g}"
            )
        if not torch.isfinite(embedding).all():
            raise ValueError("embedding contains NaN or inf values")

        self.embedding = embedding
        self.sampling_ratio = sampling_ratio
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        if method == "auto":
            method = "adaptive" if embedding.device.type == "cpu" else "dense"
        self.method = method
        self.switch_fraction = switch_fraction
        self.steps: dict[str, int] = {}  # steps of each kind in the last selection
        self.switches: list[tuple[int, str, float]] = []  # (step, new mode, candidate fraction)
        self._generator = torch.Generator()
        self._generator.manual_seed(
            random_state if random_state is not None else int(torch.randint(0, 2**62, (1,)).item())
        )

        # Step 1: the features the selection runs on (maybe projected), centred, float32.
        self.features = self._selection_features(embedding, project, eps, projection_dim)  # (N, d)
        self.sq_norms = (self.features * self.features).sum(dim=1)  # (N,)
        self._columns: torch.Tensor | None = None  # the same (N, d) stored column by column, on first use
        # Rounding noise of ‖x‖² − 2x·c + ‖c‖²: anything below this is "the same point" (it keeps
        # exact duplicates of a centre from looking uncovered). Tiny next to real distances.
        self._noise_floor = 16 * torch.finfo(self.features.dtype).eps * float(self.sq_norms.max())
        self.min_distances: torch.Tensor | None = None  # (N,) squared distance to nearest centre
        # The random start point, drawn once so repeated selections give the same coreset.
        self.start_idx = int(torch.randint(0, num_samples, (1,), generator=self._generator).item())

    def _selection_features(self, embedding, project, eps, projection_dim) -> torch.Tensor:
        features = embedding.to(torch.float64 if embedding.dtype == torch.float64 else torch.float32)
        num_samples, width = features.shape
        self.projection: SparseRandomProjection | None = None
        if project:
            target = projection_dim or johnson_lindenstrauss_min_dim(max(num_samples, 2), eps)
            if target < width:  # only project when it narrows the features (see module doc)
                seed = int(torch.randint(0, 2**62, (1,), generator=self._generator).item())
                self.projection = SparseRandomProjection(eps=eps, random_state=seed, n_components=target).fit(features)
                features = self.projection.transform(features)  # (N, d)
        # Centring changes no distance but shrinks ‖x‖², so ‖x‖² − 2x·c + ‖c‖² loses less precision.
        return features - features.mean(dim=0)

    # ------------------------------------------------------------------ step-by-step API
    def reset_distances(self) -> None:
        """Forget all centres: every point is infinitely far from the (empty) selection."""
        self.min_distances = None

    def update_distances(self, cluster_centers: list[int]) -> None:
        """Lower each point's distance to its nearest centre with the given new centres."""
        if self.min_distances is None:
            self.min_distances = torch.full_like(self.sq_norms, float("inf"))
        for center in cluster_centers:
            self.min_distances = torch.minimum(self.min_distances, self._squared_distances_to(center))
            self.min_distances[center] = 0.0  # a centre covers itself exactly

    def get_new_idx(self) -> int:
        """Index of the point farthest from its nearest centre (the next greedy centre)."""
        if self.min_distances is None:
            raise RuntimeError("no centre yet: call update_distances([...]) first")
        return int(torch.argmax(self.min_distances).item())

    def _squared_distances_to(self, center) -> torch.Tensor:
        """Squared distances of all points to one centre (an int or a 1-element device tensor)."""
        # ‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²: one matrix-vector product, no (N, d) temporary.
        index = torch.as_tensor(center, device=self.features.device).view(1)
        point = self.features.index_select(0, index).squeeze(0)  # (d,)
        squared = torch.addmv(self.sq_norms, self._matvec_features(), point, alpha=-2.0)  # (N,)
        squared.add_(self.sq_norms.index_select(0, index))
        return squared.masked_fill_(squared < self._noise_floor, 0.0)  # also clamps < 0

    # ------------------------------------------------------------------ selection
    def select_coreset_idxs(self, selected_idxs: list[int] | None = None) -> list[int]:
        """Greedy k-center selection; returns ``coreset_size`` row indices.

        Without ``selected_idxs`` the first index is the uniformly random start point
        ``start_idx`` (part of the coreset). With ``selected_idxs`` (centres chosen earlier) those
        seed the distances, no random start is used, and ``coreset_size`` *new* indices are
        returned. Fewer come back (with a warning) only if every row is covered exactly earlier.
        """
        preselected = list(selected_idxs or [])
        num_samples = self.features.shape[0]
        if any(not 0 <= i < num_samples for i in preselected):
            raise ValueError(f"selected_idxs must lie in [0, {num_samples})")
        first = self._farthest_from(preselected) if preselected else self.start_idx

        if self.method in ("pruned", "adaptive"):
            idxs = self._select_pruned(first, preselected, adaptive=self.method == "adaptive")
        else:
            idxs = self._select_dense(first, preselected)
            self.steps, self.switches = {"dense": len(idxs), "pruned": 0}, []
        if len(idxs) < self.coreset_size:
            warnings.warn(
                f"the embedding has fewer distinct rows than coreset_size="
                f"{self.coreset_size}: every row is covered after {len(idxs)} centres, "
                f"so only those are returned (coverage radius 0).",
                stacklevel=2,
            )
        return idxs

    def sample_coreset(self, selected_idxs: list[int] | None = None) -> torch.Tensor:
        """The selected rows of the *original* embedding ``(coreset_size, D)``."""
        idxs = self.select_coreset_idxs(selected_idxs)
        index = torch.tensor(idxs, dtype=torch.long, device=self.embedding.device)
        return self.embedding.index_select(0, index)

    def _farthest_from(self, centers: list[int]) -> int:
        self.reset_distances()
        self.update_distances(centers)
        return self.get_new_idx()

    def _select_dense(self, first: int, preselected: list[int]) -> list[int]:
        """One matvec per step; everything stays on the device until the final ``.tolist()``."""
        device = self.features.device
        min_sq = torch.full_like(self.sq_norms, float("inf"))  # (N,)
        for center in preselected:
            torch.minimum(min_sq, self._squared_distances_to(center), out=min_sq)
            min_sq[center] = 0.0
        selected = torch.empty(self.coreset_size, dtype=torch.long, device=device)  # (m,)
        # farthest[s]: distance² of the point picked at step s + 1 (0 = everything already covered)
        farthest = torch.empty(self.coreset_size, dtype=min_sq.dtype, device=device)
        index = torch.tensor([first], device=device)  # (1,) on device
        for step in range(self.coreset_size):
            selected[step : step + 1] = index
            torch.minimum(min_sq, self._squared_distances_to(index), out=min_sq)  # (N,)
            min_sq.index_fill_(0, index, 0.0)  # the centre covers itself exactly
            value, index = torch.max(min_sq, dim=0)  # stays on the device: no host sync
            farthest[step : step + 1] = value
            index = index.view(1)
        self.min_distances = min_sq
        # The single device -> host transfer. Cut where every point was already covered.
        idxs, farthest = selected.tolist(), farthest.tolist()
        covered_at = next((s for s, value in enumerate(farthest) if value == 0.0), None)
        return idxs if covered_at is None else idxs[: covered_at + 1]

    def _select_pruned(self, first: int, preselected: list[int], adaptive: bool = False) -> list[int]:
        """Same greedy selection, skipping points the triangle inequality proves unaffected.

        ``adaptive``: each step is either *dense* (all N distances, one matvec on all threads) or
        *pruned* (only the candidates, on one thread), chosen from the observed candidate fraction
        (see `_Switch`). Both kinds of step keep the same state, so the selection is the same.
        """
        features = self.features
        num_samples, width = features.shape
        num_centers = len(preselected) + self.coreset_size
        like = {"dtype": features.dtype, "device": features.device}
        # Centres stored column by column, (d, K): the gap matvec below reads centers_t[:, :k].T (k, d).
        centers_t = torch.empty(width, num_centers, **like)  # (d, K)
        center_sq = torch.empty(num_centers, **like)  # (K,)
        min_sq = torch.full((num_samples,), float("inf"), **like)  # (N,) squared
        # Position (in selection order) of each point's nearest centre.
        owner = torch.zeros(num_samples, dtype=torch.long, device=features.device)  # (N,)
        switch = _Switch(num_samples, torch.get_num_threads(), adaptive, self.switch_fraction, features.device)

        selected: list[int] = []
        queue = preselected + [first]
        with switch:
            for position in range(num_centers):
                if position < len(queue):
                    index = queue[position]
                else:
                    value, index = torch.max(min_sq, dim=0)
                    if value == 0.0:  # every point already coincides with a centre
                        break
                    index = int(index)
                if position >= len(preselected):
                    selected.append(index)
                center = features[index]  # (d,)
                centers_t[:, position] = center
                center_sq[position] = self.sq_norms[index]

                if position == 0 or not switch.wants_candidates(position):
                    # Dense step: every point's distance, one matvec (all threads in adaptive mode).
                    new_sq = self._candidate_squared(None, center)  # (N,)
                    closer = new_sq < min_sq
                    torch.where(closer, new_sq, min_sq, out=min_sq)
                    owner.masked_fill_(closer, position)
                    if position > 0:
                        switch.dense_step()
                else:
                    # ‖a − c‖² for every earlier centre a: one matvec over the centres.
                    gap_sq = torch.addmv(center_sq[:position], centers_t[:, :position].T, center, alpha=-2.0)
                    gap_sq = gap_sq.add_(center_sq[position]).clamp_min_(0.0)  # (position,)
                    # x can only move closer if ‖owner(x) − c‖ < 2·min_dist(x) (triangle ineq.),
                    # i.e. ‖owner(x) − c‖² < 4·min_dist(x)²: squares throughout, no square root.
                    may_improve = gap_sq.index_select(0, owner) < 4.0 * min_sq  # (N,) bool
                    candidates = torch.nonzero(may_improve).squeeze(1)  # (n_c,)
                    new_sq = self._candidate_squared(candidates, center)  # (n_c,)
                    closer = new_sq < min_sq.index_select(0, candidates)
                    moved = candidates[closer]
                    min_sq.index_copy_(0, moved, new_sq[closer])
                    owner.index_fill_(0, moved, position)
                    switch.pruned_step(position, candidates.numel())
                min_sq[index] = 0.0  # the centre covers itself exactly
        self.min_distances = min_sq
        self.steps = dict(switch.steps)
        self.switches = list(switch.switches)
        return selected

    def _matvec_features(self) -> torch.Tensor:
        """The features (N, d) for a matrix-vector product over all rows: on the CPU a column-major copy
        (strides (1, N)), made once. torch's CPU ``addmv`` reads a column-major matrix about 3× faster than
        the row-major one (measured: 30k × 254, 1.9 vs 5.7 ms; 214k × 152, 9–12 vs 31–39 ms, one or two
        threads) — the reference's per-step ``(x − c).norm`` streams the rows as fast as the slow path,
        so without this the dense step was no faster than the reference's. The pruned path keeps the
        row-major features: it gathers rows. Costs one more copy of the (projected) features."""
        if self.features.device.type != "cpu":
            return self.features
        if self._columns is None:
            self._columns = self.features.T.contiguous().T  # (N, d), strides (1, N)
        return self._columns

    def _candidate_squared(self, rows: torch.Tensor | None, center: torch.Tensor) -> torch.Tensor:
        """‖x − c‖² for the candidate rows (None: all rows), via ‖x‖² − 2·x·c + ‖c‖² (as "dense")."""
        center_sq = center @ center
        if rows is None:
            squared = torch.addmv(self.sq_norms, self._matvec_features(), center, alpha=-2.0)  # (N,)
        elif rows.numel() > self.features.shape[0] // 4:
            # Early steps: most points are candidates; one matvec over all rows beats gathering.
            squared = torch.addmv(self.sq_norms, self._matvec_features(), center, alpha=-2.0).index_select(0, rows)
        else:
            # Later steps: gather the few candidate rows, in chunks to bound the (rows, d) block.
            squared = (
                torch.cat(
                    [
                        torch.addmv(
                            self.sq_norms.index_select(0, chunk),
                            self.features.index_select(0, chunk),
                            center,
                            alpha=-2.0,
                        )
                        for chunk in rows.split(self.chunk_rows)
                    ]
                )
                if rows.numel()
                else rows.new_empty(0, dtype=self.features.dtype)
            )
        squared.add_(center_sq)
        return squared.masked_fill_(squared < self._noise_floor, 0.0)


class _Switch:
    """Chooses each step of `KCenterGreedy._select_pruned`: dense (all threads) or pruned (one).

    The pruned step pays a fixed price (about six passes over N small values: the owner gap, the
    comparison, ``nonzero``...) plus a gather of the n_c candidate rows; the dense step is one
    streaming matvec over all N rows, shared by T threads. So pruning wins only while the
    *candidate fraction* f = n_c / N is small, and less so with more threads: the break-even is
    near f ≈ 0.4 / T (T = 2: 0.2). The fraction is observed as the selection proceeds:

    * pruned mode (one thread): after every step; when the mean of the last ``WINDOW`` steps
      exceeds ``dense_above`` (random high-dimensional data, where hardly any point can be
      ruled out), switch to dense;
    * dense mode (T threads): every ``PROBE_EVERY`` steps one step is run pruned, as a probe;
      when two probes in a row average below ``pruned_below`` = 0.75 · ``dense_above`` (clustered
      features once a few hundred centres are placed), switch to pruned.

    Adaptive selection starts dense (the first steps rule out almost nothing). With
    ``adaptive=False`` every step is pruned, on one thread. Recorded: ``steps`` (how many of
    each kind; probes count as pruned) and ``switches`` ``[(step, mode, mean fraction), ...]``.
    """

    WINDOW = 8
    PROBE_EVERY = 16

    def __init__(
        self,
        num_samples: int,
        threads: int,
        adaptive: bool,
        switch_fraction: float | None,
        device: torch.device | None = None,
    ):
        self.num_samples, self.threads, self.adaptive = num_samples, max(1, threads), adaptive
        self.on_cpu = device is None or device.type == "cpu"
        self.dense_above = switch_fraction if switch_fraction is not None else 0.4 / self.threads
        self.pruned_below = 0.75 * self.dense_above
        self.mode = "dense" if adaptive else "pruned"
        self.recent: list[float] = []
        self.since_probe = 0
        self.steps = {"dense": 0, "pruned": 0}
        self.switches: list[tuple[int, str, float]] = []
        self._previous_threads: int | None = None

    # Threads: the pruned loop's many *small* ops run on one thread (thread start/join costs more
    # than their work; on a shared 2-core machine two threads were measured 5x slower), the dense
    # matvec on all of them. torch's thread count is process-wide: restored on exit.
    def __enter__(self):
        if self.on_cpu:
            self._previous_threads = torch.get_num_threads()
            self._apply_threads()
        return self

    def __exit__(self, *exc):
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)

    def _apply_threads(self) -> None:
        if self.on_cpu:
            torch.set_num_threads(1 if self.mode == "pruned" else self.threads)

    def wants_candidates(self, position: int) -> bool:
        """Run this step pruned? (Always in pruned mode; as a probe now and then in dense mode.)"""
        if self.mode == "pruned":
            return True
        self.since_probe += 1
        return self.since_probe >= self.PROBE_EVERY

    def dense_step(self) -> None:
        self.steps["dense"] += 1

    def pruned_step(self, position: int, num_candidates: int) -> None:
        self.steps["pruned"] += 1
        if not self.adaptive:
            return
        self.recent.append(num_candidates / self.num_samples)
        if self.mode == "dense":
            self.since_probe = 0
            probes = self.recent[-2:]
            if len(probes) == 2 and sum(probes) / 2 < self.pruned_below:
                self._switch(position, "pruned", sum(probes) / 2)
        else:
            window = self.recent[-self.WINDOW :]
            if len(window) == self.WINDOW and sum(window) / self.WINDOW > self.dense_above:
                self._switch(position, "dense", sum(window) / self.WINDOW)

    def _switch(self, position: int, mode: str, fraction: float) -> None:
        self.mode = mode
        self.recent = []
        self.switches.append((position, mode, round(fraction, 4)))
        self._apply_threads()


def coverage_radius(embedding: torch.Tensor, idxs, chunk_rows: int = 4096) -> float:
    """Largest distance from any row of ``embedding (N, D)`` to its nearest row in ``idxs``.

    The k-center objective: smaller is better. Computed in query chunks so memory stays bounded.
    """
    from adlearn.components.nearest_neighbors import NearestNeighbors

    index = torch.as_tensor(
        list(idxs) if not isinstance(idxs, torch.Tensor) else idxs, dtype=torch.long, device=embedding.device
    )
    centers = embedding.index_select(0, index)
    searcher = NearestNeighbors(backend="torch", max_block_elements=chunk_rows * centers.shape[0])
    searcher.fit(centers)
    distances, _ = searcher.search(embedding, k=1)  # (N, 1)
    return float(distances.max())
