"""Fast paths of `KCenterGreedy` (``method="dense"``, ``"pruned"``, ``"adaptive"``): the same greedy
k-center selection as the readable loop in `adlearn.components.kcenter_greedy`, sooner.

The reference (``anomalib.models.components.sampling.k_center_greedy``) recomputes ``‖x − c‖`` for all N
rows with a fresh (N, d) temporary every step: ~850 s for 123k patches → 12.3k centres on 2 CPU cores.
`KCenterGreedy` already replaces that by one matrix-vector product per step,
``‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²``, on features stored column by column (`column_major`). Here:

* ``method="dense"`` (default on accelerators): that loop with the minimum and argmax left on the device
  and the indices collected in a device tensor, moved to the host once at the end — no per-step sync.
* ``method="pruned"``: the triangle inequality skips rows that cannot move closer. Each row remembers
  its nearest centre a; if ``‖a − c_new‖ ≥ 2·min_dist`` then ``‖x − c_new‖ ≥ ‖a − c_new‖ − ‖x − a‖ ≥
  min_dist``, so x is unaffected. Only the remaining *candidates* (typically 1–3 % of the rows on
  clustered features such as PatchCore's once a few hundred centres are placed) get a distance, with
  the same expansion. A step then costs O(#centres · d + N + #candidates · d) instead of O(N · d) memory
  traffic; its many small ops run on one thread. It needs a host sync per step (the candidate count),
  so accelerators use "dense".
* ``method="adaptive"`` (default on CPU): pruning pays only while few rows are candidates. On random
  high-dimensional data (distances concentrate) nearly every row stays one, and a pruned step on one
  thread is then *slower* than one dense matvec on all threads. So each step is dense (all threads) or
  pruned (one thread), chosen from the candidate fraction observed so far: `Switch`.
  ``sampler.steps`` and ``sampler.switches`` tell what was chosen.

All pick the same rows as a brute-force greedy up to floating-point ties (the reference tests check it).
Measured speed-ups: ``benchmarks/bench_kcenter_greedy.py``. Also here: `coverage_radius`, the objective they
all minimise, measured in chunks (`kcenter_greedy` re-exports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from adlearn.components.nearest_neighbors import NearestNeighbors

if TYPE_CHECKING:
    from adlearn.components.kcenter_greedy import KCenterGreedy


def column_major(features: torch.Tensor) -> torch.Tensor:
    """The features ``(N, d)`` for a matrix-vector product over all rows: on the CPU a column-major copy
    (strides (1, N)), elsewhere the features themselves.

    torch's CPU ``addmv`` reads a column-major matrix about 3× faster than a row-major one (measured:
    30k × 254, 1.9 vs 5.7 ms; 214k × 152, 9–12 vs 31–39 ms, one or two threads) — the reference's per-step
    ``(x − c).norm`` streams the rows as fast as the slow layout, so without this the dense step was no
    faster than the reference's. The pruned steps keep the row-major features: they gather rows. Costs
    one more copy of the (projected) features.
    """
    if features.device.type != "cpu":
        return features
    return features.T.contiguous().T  # (N, d), strides (1, N)


def candidate_squared(sampler: KCenterGreedy, rows: torch.Tensor | None, center: torch.Tensor) -> torch.Tensor:
    """``‖x − c‖²`` for the candidate ``rows`` (None: all rows) of ``sampler.features``, via ``‖x‖² − 2·x·c + ‖c‖²``."""
    features, sq_norms = sampler.features, sampler.sq_norms
    center_sq = center @ center
    if rows is None:
        squared = torch.addmv(sq_norms, sampler.columns, center, alpha=-2.0)  # (N,)
    elif rows.numel() > features.shape[0] // 4:
        # Early steps: most rows are candidates; one matvec over all rows beats gathering.
        squared = torch.addmv(sq_norms, sampler.columns, center, alpha=-2.0).index_select(0, rows)
    elif rows.numel():
        # Later steps: gather the few candidate rows, in chunks to bound the (rows, d) block.
        chunks = rows.split(sampler.chunk_rows)
        squared = torch.cat(
            [torch.addmv(sq_norms.index_select(0, c), features.index_select(0, c), center, alpha=-2.0) for c in chunks]
        )  # (n_c,)
    else:
        squared = rows.new_empty(0, dtype=features.dtype)
    squared.add_(center_sq)
    return squared.masked_fill_(squared < sampler.noise_floor, 0.0)  # also clamps < 0


def select_dense(sampler: KCenterGreedy, first: int) -> list[int]:
    """``KCenterGreedy._select_greedy`` without its host sync per step: the indices stay on the device until
    one final transfer (the greedy loop's ``.item()`` waits for an accelerator every step). Distances from the
    ``sampler.min_distances`` of any preselected centres; sets ``sampler.min_distances`` and ``sampler.steps``."""
    device = sampler.features.device
    min_sq = sampler.min_distances  # (N,) squared; inf without preselected centres
    selected = torch.empty(sampler.coreset_size, dtype=torch.long, device=device)  # (m,)
    # farthest[s]: squared distance of the row picked at step s + 1 (0: every row already covered)
    farthest = torch.empty(sampler.coreset_size, dtype=min_sq.dtype, device=device)  # (m,)
    index = torch.tensor([first], device=device)  # (1,) on the device
    for step in range(sampler.coreset_size):
        selected[step : step + 1] = index
        torch.minimum(min_sq, sampler.squared_distances_to(index), out=min_sq)  # (N,)
        min_sq.index_fill_(0, index, 0.0)  # the centre covers itself exactly
        value, index = torch.max(min_sq, dim=0)  # stays on the device: no host sync
        farthest[step : step + 1] = value
        index = index.view(1)
    # The single device -> host transfer. Cut where every row was already covered.
    idxs, farthest = selected.tolist(), farthest.tolist()
    covered_at = next((step for step, value in enumerate(farthest) if value == 0.0), None)
    idxs = idxs if covered_at is None else idxs[: covered_at + 1]
    sampler.min_distances, sampler.steps, sampler.switches = min_sq, {"dense": len(idxs), "pruned": 0}, []
    return idxs


def select_pruned(sampler: KCenterGreedy, first: int, preselected: list[int], adaptive: bool = False) -> list[int]:
    """The greedy selection of ``sampler.coreset_size`` new rows after ``preselected``, starting at ``first``,
    skipping rows the triangle inequality proves unaffected.

    ``adaptive``: each step is either *dense* (all N distances, one matvec on all threads) or *pruned* (only
    the candidates, on one thread), chosen by `Switch`. Both kinds of step keep the same state, so the
    selection is the same. Sets ``sampler.min_distances``, ``sampler.steps`` and ``sampler.switches``.
    """
    features = sampler.features
    num_samples, width = features.shape
    num_centers = len(preselected) + sampler.coreset_size
    like = {"dtype": features.dtype, "device": features.device}
    # Centres stored column by column, (d, K): the gap matvec below reads centers_t[:, :k].T (k, d).
    centers_t = torch.empty(width, num_centers, **like)  # (d, K)
    center_sq = torch.empty(num_centers, **like)  # (K,)
    min_sq = torch.full((num_samples,), float("inf"), **like)  # (N,) squared
    # Position (in selection order) of each row's nearest centre.
    owner = torch.zeros(num_samples, dtype=torch.long, device=features.device)  # (N,)
    switch = Switch(num_samples, torch.get_num_threads(), adaptive, sampler.switch_fraction, features.device)

    selected: list[int] = []
    queue = preselected + [first]
    with switch:
        for position in range(num_centers):
            if position < len(queue):
                index = queue[position]
            else:
                value, index = torch.max(min_sq, dim=0)
                if value == 0.0:  # every row already coincides with a centre
                    break
                index = int(index)
            if position >= len(preselected):
                selected.append(index)
            center = features[index]  # (d,)
            centers_t[:, position] = center
            center_sq[position] = sampler.sq_norms[index]

            if position == 0 or not switch.wants_candidates(position):
                # Dense step: every row's distance, one matvec (all threads in adaptive mode).
                new_sq = candidate_squared(sampler, None, center)  # (N,)
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
                new_sq = candidate_squared(sampler, candidates, center)  # (n_c,)
                closer = new_sq < min_sq.index_select(0, candidates)
                moved = candidates[closer]
                min_sq.index_copy_(0, moved, new_sq[closer])
                owner.index_fill_(0, moved, position)
                switch.pruned_step(position, candidates.numel())
            min_sq[index] = 0.0  # the centre covers itself exactly
    sampler.min_distances = min_sq
    sampler.steps = dict(switch.steps)
    sampler.switches = list(switch.switches)
    return selected


class Switch:
    """Chooses each step of `select_pruned`: dense (all threads) or pruned (one).

    The pruned step pays a fixed price (about six passes over N small values: the owner gap, the
    comparison, ``nonzero``...) plus a gather of the n_c candidate rows; the dense step is one
    streaming matvec over all N rows, shared by T threads. So pruning wins only while the
    *candidate fraction* f = n_c / N is small, and less so with more threads: the break-even is
    near f ≈ 0.4 / T (T = 2: 0.2). The fraction is observed as the selection proceeds:

    * pruned mode (one thread): after every step; when the mean of the last ``WINDOW`` steps
      exceeds ``dense_above`` (random high-dimensional data, where hardly any row can be
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
    """The k-center objective ``max_i min_{c ∈ idxs} ‖x_i − x_c‖`` of ``embedding (N, D)`` (in chunks)."""
    index = torch.as_tensor(idxs if isinstance(idxs, torch.Tensor) else list(idxs), dtype=torch.long)
    centers = embedding.index_select(0, index.to(embedding.device))  # (m, D)
    searcher = NearestNeighbors(backend="torch", max_block_elements=chunk_rows * centers.shape[0]).fit(centers)
    distances, _ = searcher.search(embedding, k=1)  # (N, 1)
    return float(distances.max())
