"""Reference tests for the core components: PCA, SparseRandomProjection, KCenterGreedy,
NearestNeighbors, GaussianBlur2d, MultiVariateGaussian, SingleClassGaussian.

Every numeric check compares with an independent oracle (scikit-learn, SciPy, NumPy or a
brute-force loop written here) at the tolerance stated next to it. Sizes are tiny: the whole file
runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.spatial.distance
import sklearn.decomposition
import sklearn.neighbors
import sklearn.random_projection
import torch

from adlearn.components import (
    PCA,
    GaussianBlur2d,
    KCenterGreedy,
    MultiVariateGaussian,
    NearestNeighbors,
    NotFittedError,
    SingleClassGaussian,
    SparseRandomProjection,
    kcenter_fast,
)
from adlearn.components import nearest_neighbors as nn_module
from adlearn.components.kcenter_fast import Switch
from adlearn.components.kcenter_greedy import coverage_radius


def correlated_data(n: int, d: int, seed: int = 0, rank: int | None = None) -> torch.Tensor:
    """Samples with a decaying spectrum (so PCA has well-separated components)."""
    g = torch.Generator().manual_seed(seed)
    rank = rank or d
    latent = torch.randn(n, rank, generator=g, dtype=torch.float64) * torch.logspace(1, -1, rank, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:rank]
    return latent @ mixing + 3.0  # (n, d), non-zero mean


def clustered_data(n: int, d: int, clusters: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 5
    labels = torch.randint(0, clusters, (n,), generator=g)
    return centres[labels] + torch.randn(n, d, generator=g)


def state_dict_round_trip(fitted: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """Load a fitted module's state into a fresh, unfitted one (buffers must resize)."""
    fresh.load_state_dict(fitted.state_dict())
    return fresh


# ============================================================================ PCA
class TestPCA:
    def test_matches_sklearn(self):
        x = correlated_data(200, 12)
        ours = PCA(n_components=5).fit(x)
        ref = sklearn.decomposition.PCA(n_components=5, svd_solver="full").fit(x.numpy())

        # Singular values and explained variance S²/(N−1): relative 1e-10 (both float64).
        np.testing.assert_allclose(ours.singular_values.numpy(), ref.singular_values_, rtol=1e-10)
        explained = ours.singular_values.numpy() ** 2 / (x.shape[0] - 1)
        np.testing.assert_allclose(explained, ref.explained_variance_, rtol=1e-10)
        np.testing.assert_allclose(ours.mean.numpy(), ref.mean_, atol=1e-12)

        # Projections agree up to the sign of each component: atol 1e-8.
        z_ours, z_ref = ours.transform(x).numpy(), ref.transform(x.numpy())
        signs = np.sign((z_ours * z_ref).sum(axis=0))
        np.testing.assert_allclose(z_ours, z_ref * signs, atol=1e-8)

        # Reconstruction (with the mean added back, as sklearn does): atol 1e-8.
        np.testing.assert_allclose(
            ours.inverse_transform(ours.transform(x)).numpy(), ref.inverse_transform(z_ref), atol=1e-8
        )

    @pytest.mark.parametrize("ratio", [0.5, 0.9, 0.99])
    def test_ratio_mode_k_matches_sklearn(self, ratio):
        x = correlated_data(150, 10, seed=1)
        ours = PCA(n_components=ratio).fit(x)
        ref = sklearn.decomposition.PCA(n_components=ratio, svd_solver="full").fit(x.numpy())
        assert int(ours.num_components) == ref.n_components_
        # Minimal k: the cumulative ratio reaches the target at k but not at k−1.
        variance = ours.singular_values.double() ** 2
        total = (torch.linalg.svdvals(x - x.mean(0)) ** 2).sum()
        k = int(ours.num_components)
        assert variance.sum() / total >= ratio
        assert k == 1 or variance[:-1].sum() / total < ratio

    def test_fit_transform_honours_ratio_mode_and_input_is_untouched(self):
        x = correlated_data(100, 8, seed=2).float()
        before = x.clone()
        pca = PCA(0.9)
        z = pca.fit_transform(x)
        assert z.shape == (100, int(pca.num_components))
        assert torch.equal(x, before)  # fit/transform never mutate
        pca.transform(x)
        assert torch.equal(x, before)

    def test_full_rank_round_trip_is_identity(self):
        x = correlated_data(50, 6, seed=3)
        pca = PCA(6).fit(x)
        torch.testing.assert_close(pca.inverse_transform(pca.transform(x)), x, atol=1e-10, rtol=0)

    def test_documented_example_shapes(self):
        embedding = torch.rand(1000, 5)
        pca = PCA(n_components=2)
        pca.fit(embedding)
        assert pca.transform(embedding).shape == (1000, 2)
        assert pca.fit_transform(embedding).shape == (1000, 2)
        assert pca(embedding).shape == (1000, 2)
        assert pca.inverse_transform(pca(embedding)).shape == (1000, 5)
        assert pca.singular_vectors.shape == (5, 2) and pca.singular_values.shape == (2,)

    def test_state_dict_round_trip(self):
        x = correlated_data(80, 7, seed=4).float()
        pca = PCA(0.95).fit(x)
        fresh = state_dict_round_trip(pca, PCA(0.95))
        assert int(fresh.num_components) == int(pca.num_components)
        assert torch.equal(fresh.transform(x), pca.transform(x))
        assert torch.equal(fresh.inverse_transform(pca(x)), pca.inverse_transform(pca(x)))

    def test_errors(self):
        with pytest.raises(NotFittedError, match="fit"):
            PCA(2).transform(torch.rand(4, 3))
        with pytest.raises(ValueError, match=r"n_components=10.*min\(5, 3\) = 3"):
            PCA(10).fit(torch.rand(5, 3))
        with pytest.raises(ValueError, match="empty"):
            PCA(1).fit(torch.rand(0, 3))
        bad = torch.rand(6, 3)
        bad[2, 1] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            PCA(1).fit(bad)
        with pytest.raises(ValueError, match="2-D"):
            PCA(1).fit(torch.rand(6))
        pca = PCA(2).fit(torch.rand(10, 4))
        with pytest.raises(ValueError, match="expects 4"):
            pca.transform(torch.rand(3, 5))
        with pytest.raises(ValueError, match="expects 2"):
            pca.inverse_transform(torch.rand(3, 3))
        for bad_n in (0, 1.5, -0.1):
            with pytest.raises(ValueError):
                PCA(bad_n)
        with pytest.raises(TypeError):
            PCA(True)
        with pytest.raises(ValueError, match="identical"):
            PCA(0.9).fit(torch.ones(5, 3))


# ============================================================================ SparseRandomProjection
class TestSparseRandomProjection:
    @pytest.mark.parametrize("n,eps", [(1000, 0.1), (219_520, 0.9), (50, 0.5), (123_000, 0.9)])
    def test_output_dim_is_jl_min_dim(self, n, eps):
        expected = int(sklearn.random_projection.johnson_lindenstrauss_min_dim(n, eps=eps))
        srp = SparseRandomProjection(eps=eps, random_state=0).fit(torch.zeros(n, 2))
        assert srp.num_components == expected
        if (n, eps) == (1000, 0.1):
            assert expected == 5920  # the documented example
        if (n, eps) == (219_520, 0.9):
            assert expected == 303  # KCenterGreedy's width in MODELS.md

    def test_documented_example(self):
        srp = SparseRandomProjection(eps=0.1, random_state=0).fit(torch.rand(1000, 5))
        assert srp.transform(torch.rand(1000, 5)).shape == (1000, 5920)

    def test_pairwise_distances_preserved(self):
        # Criterion: with k = JL(N=100, eps=0.3) every squared distance should keep its ratio in
        # [1 − eps, 1 + eps]; we require it for at least 99 % of the 4950 pairs.
        g = torch.Generator().manual_seed(0)
        x = torch.randn(100, 2000, generator=g, dtype=torch.float64)
        srp = SparseRandomProjection(eps=0.3, random_state=1).fit(x)
        z = srp.transform(x)
        rows, cols = torch.triu_indices(100, 100, offset=1)
        ratio = torch.cdist(z, z)[rows, cols] ** 2 / torch.cdist(x, x)[rows, cols] ** 2
        within = ((ratio > 0.7) & (ratio < 1.3)).double().mean()
        assert within >= 0.99, f"only {within:.3f} of pairs within eps"

    def test_density_and_values(self):
        d = 2000
        srp = SparseRandomProjection(eps=0.3, random_state=3).fit(torch.zeros(100, d))
        matrix = srp.components
        k = matrix.shape[0]
        density = (matrix != 0).double().mean().item()
        # ~1.0e6 entries, expected 22.4k non-zeros: ±5 % relative is > 10 binomial std devs.
        assert abs(density - 1 / math.sqrt(d)) < 0.05 / math.sqrt(d)
        scale = math.sqrt(math.sqrt(d)) / math.sqrt(k)
        torch.testing.assert_close(matrix[matrix != 0].abs(), torch.full_like(matrix[matrix != 0], scale))
        positive = (matrix > 0).double().sum() / (matrix != 0).double().sum()
        assert abs(positive - 0.5) < 0.02  # signs are balanced

    def test_override_seed_and_errors(self):
        x = torch.rand(30, 40)
        srp = SparseRandomProjection(random_state=7, n_components=16).fit(x)
        assert srp.transform(x).shape == (30, 16)
        again = SparseRandomProjection(random_state=7, n_components=16).fit(x)
        assert torch.equal(srp.components, again.components)
        with pytest.raises(NotFittedError, match="fit"):
            SparseRandomProjection().transform(x)
        with pytest.raises(ValueError, match="40"):
            srp.transform(torch.rand(3, 41))
        with pytest.raises(ValueError, match="eps"):
            SparseRandomProjection(eps=1.5)


# ============================================================================ KCenterGreedy
def brute_force_greedy(x: torch.Tensor, start: int, size: int, centres=()) -> list[int]:
    """Farthest-point sampling, written the obvious way (float64, explicit norms).

    ``centres`` are already-selected points: they only seed the distances.
    """
    x = x.double()
    min_dist = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for c in centres:
        min_dist = torch.minimum(min_dist, torch.linalg.norm(x - x[c], dim=1))
    selected = []
    new = start
    while len(selected) < size:
        selected.append(new)
        min_dist = torch.minimum(min_dist, torch.linalg.norm(x - x[new], dim=1))
        new = int(torch.argmax(min_dist))
    return selected


class TestKCenterGreedy:
    @pytest.mark.parametrize("method", ["greedy", "dense", "pruned", "adaptive"])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_identical_to_brute_force(self, method, seed):
        x = clustered_data(400, 16, seed=seed)
        sampler = KCenterGreedy(x, sampling_ratio=0.1, project=False, method=method, random_state=seed)
        idxs = sampler.select_coreset_idxs()
        assert len(idxs) == 40 == int(400 * 0.1)
        # The random start point is the first index and part of the coreset.
        assert idxs == brute_force_greedy(x, start=idxs[0], size=40)
        assert sampler.min_distances[idxs].abs().max() == 0

    def test_adaptive_goes_dense_on_random_gaussian_data_and_pruned_on_clustered_data(self):
        # Random high-dimensional data: distances concentrate, the triangle inequality rules out
        # almost no point, so pruning cannot pay: the selection stays dense. Clustered data: once a
        # few dozen centres are placed most points are ruled out, so it switches to pruned steps.
        # Both: the same points as a brute-force greedy; torch's thread count is restored.
        threads = torch.get_num_threads()
        gaussian = torch.randn(3000, 128, generator=torch.Generator().manual_seed(0))
        clustered = clustered_data(3000, 32, seed=3)
        runs = {}
        for name, x in (("gaussian", gaussian), ("clustered", clustered)):
            sampler = KCenterGreedy(x, 0.1, project=False, random_state=0, switch_fraction=0.2)
            assert sampler.method == "adaptive"  # the CPU default
            idxs = sampler.select_coreset_idxs()
            assert idxs == brute_force_greedy(x, start=idxs[0], size=300)
            assert sum(sampler.steps.values()) == 299 and torch.get_num_threads() == threads
            runs[name] = sampler
        assert runs["gaussian"].switches == []  # never left dense
        assert runs["gaussian"].steps["dense"] > 0.9 * 299  # pruned steps are only the probes
        first_switch = runs["clustered"].switches[0]
        assert first_switch[1] == "pruned" and first_switch[2] < 0.15 and first_switch[0] < 100
        assert runs["clustered"].steps["pruned"] > 0.8 * 299

    def test_switch_fraction_extremes_change_the_steps_not_the_selection(self):
        x = clustered_data(2000, 32, seed=4)
        dense = KCenterGreedy(x, 0.1, project=False, random_state=1, method="dense").select_coreset_idxs()
        never = KCenterGreedy(x, 0.1, project=False, random_state=1, switch_fraction=1e-4)
        eager = KCenterGreedy(x, 0.1, project=False, random_state=1, switch_fraction=1.0)
        assert never.select_coreset_idxs() == eager.select_coreset_idxs() == dense
        # 1e-4: a probe always has >= 1 candidate (0.05 % of 2000), so it never leaves dense;
        # pruned steps are exactly the probes, one per PROBE_EVERY steps.
        assert never.switches == [] and never.steps["pruned"] == 199 // Switch.PROBE_EVERY
        # 1.0: the first two probes switch to pruned and no window can exceed 100 %.
        assert [mode for _, mode, _ in eager.switches] == ["pruned"]
        assert eager.switches[0][0] == 2 * Switch.PROBE_EVERY

    def test_switch_rule_and_threads(self):
        switch = Switch(1000, threads=2, adaptive=True, switch_fraction=0.2)
        with switch:
            assert switch.mode == "dense" and torch.get_num_threads() == 2
            wants = [switch.wants_candidates(p) for p in range(1, 17)]
            assert wants == [False] * 15 + [True]  # one probe per 16 steps
            switch.pruned_step(16, 100)  # 10 %: one probe is not enough
            assert switch.mode == "dense"
            [switch.wants_candidates(p) for p in range(17, 33)]
            switch.pruned_step(32, 120)  # mean 11 % < 0.75 · 20 %
            assert switch.mode == "pruned" and torch.get_num_threads() == 1
            for position in range(33, 40):
                switch.pruned_step(position, 900)  # 7 of the 8-step window
            assert switch.mode == "pruned"
            switch.pruned_step(40, 900)  # window mean 90 % > 20 %
            assert switch.mode == "dense" and torch.get_num_threads() == 2
            assert switch.switches == [(32, "pruned", 0.11), (40, "dense", 0.9)]

    def test_step_by_step_api_matches(self):
        x = clustered_data(200, 8, seed=5)
        sampler = KCenterGreedy(x, sampling_ratio=0.05, project=False)
        reference = brute_force_greedy(x, start=3, size=10)
        sampler.reset_distances()
        chosen = [3]
        sampler.update_distances([3])
        while len(chosen) < 10:
            new = sampler.get_new_idx()
            chosen.append(new)
            sampler.update_distances([new])
        assert chosen == reference

    def test_coverage_beats_random_subsets(self):
        x = clustered_data(600, 12, seed=6)
        idxs = KCenterGreedy(x, sampling_ratio=0.05, project=False, random_state=0).select_coreset_idxs()
        greedy_radius = coverage_radius(x, idxs)
        g = torch.Generator().manual_seed(0)
        random_radii = [coverage_radius(x, torch.randperm(600, generator=g)[: len(idxs)]) for _ in range(20)]
        assert greedy_radius <= min(random_radii)
        # coverage_radius itself vs a direct cdist: atol 1e-4.
        direct = torch.cdist(x.double(), x[idxs].double()).min(dim=1).values.max().item()
        assert abs(greedy_radius - direct) < 1e-4

    @pytest.mark.parametrize("n,ratio", [(101, 0.05), (1000, 0.1), (37, 1.0), (250, 0.333)])
    def test_size_is_int_n_ratio(self, n, ratio):
        x = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
        sampler = KCenterGreedy(x, sampling_ratio=ratio, project=False, random_state=0)
        assert len(sampler.select_coreset_idxs()) == int(n * ratio) == sampler.coreset_size
        assert sampler.sample_coreset().shape == (int(n * ratio), 6)

    def test_projection_selects_on_projected_and_returns_original_rows(self):
        x = clustered_data(500, 1000, seed=7)  # JL width for N=500, eps=0.9 is 153 < 1000
        sampler = KCenterGreedy(x, sampling_ratio=0.04, random_state=0)
        assert sampler.projection is not None and sampler.features.shape == (500, 153)
        idxs = sampler.select_coreset_idxs()
        assert idxs[0] == sampler.start_idx
        assert torch.equal(sampler.sample_coreset(), x[idxs])  # original rows, same selection
        assert idxs == brute_force_greedy(sampler.features, start=idxs[0], size=20)
        # Narrow features: the JL width (≥ D) would widen them, so no projection.
        narrow = KCenterGreedy(torch.randn(500, 32), sampling_ratio=0.1)
        assert narrow.projection is None and narrow.features.shape[1] == 32

    def test_preselected_and_duplicates(self):
        x = clustered_data(300, 8, seed=8)
        sampler = KCenterGreedy(x, sampling_ratio=0.05, project=False)
        # With centres {0, 5} the first new point is the farthest from both; 15 new ones follow.
        first = int(torch.cdist(x, x[[0, 5]]).min(dim=1).values.argmax())
        expected = brute_force_greedy(x, first, 15, centres=(0, 5))
        for method in ("greedy", "dense", "pruned", "adaptive"):
            sampler.method = method
            new = sampler.select_coreset_idxs(selected_idxs=[0, 5])
            assert new == expected and not {0, 5} & set(new)
        # Fewer distinct rows than the coreset size: each distinct row once, with a warning.
        repeated = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]).repeat(10, 1)
        for method in ("greedy", "dense", "pruned", "adaptive"):
            with pytest.warns(UserWarning, match="distinct"):
                idxs = KCenterGreedy(repeated, 0.5, project=False, method=method).select_coreset_idxs()
            assert sorted(repeated[idxs].tolist()) == sorted([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])

    @pytest.mark.parametrize(
        "x, options",
        [
            (clustered_data(1200, 24, seed=9), {"project": False}),
            (torch.randn(900, 96, generator=torch.Generator().manual_seed(10)), {"project": False}),
            (clustered_data(600, 700, seed=11), {}),  # projected: JL width 162 < 700
            (clustered_data(500, 12, seed=12).double(), {"project": False}),
        ],
        ids=["clustered", "gaussian", "projected", "float64"],
    )
    def test_fast_paths_pick_exactly_the_rows_of_the_readable_loop(self, x, options):
        # kcenter_fast's methods are speed-ups of `method="greedy"` (the loop in kcenter_greedy): the same
        # rows in the same order, with or without preselected centres, and the same final distances ("dense":
        # bit for bit, the same formula; "pruned" gathers rows, so they differ in rounding only: rtol 1e-5).
        # The greedy loop itself is a brute-force greedy on the selection features.
        runs = {}
        for method in ("greedy", "dense", "pruned", "adaptive"):
            sampler = KCenterGreedy(x, 0.1, random_state=3, method=method, switch_fraction=0.3, **options)
            runs[method] = (sampler.select_coreset_idxs(), sampler.min_distances.clone())
            runs[method, "pre"] = sampler.select_coreset_idxs(selected_idxs=[4, 8])
        greedy, distances = runs["greedy"]
        for method in ("dense", "pruned", "adaptive"):
            assert runs[method][0] == greedy and runs[method, "pre"] == runs["greedy", "pre"], method
        assert torch.equal(runs["dense"][1], distances)
        for method in ("pruned", "adaptive"):
            torch.testing.assert_close(runs[method][1], distances, rtol=1e-5, atol=1e-5 * float(distances.max()))
        assert greedy == brute_force_greedy(sampler.features, start=greedy[0], size=len(greedy))
        assert coverage_radius is kcenter_fast.coverage_radius  # kcenter_greedy re-exports it

    def test_auto_method_is_adaptive_on_cpu_and_the_greedy_loop_records_dense_steps(self):
        x = clustered_data(300, 8, seed=13)
        assert KCenterGreedy(x, 0.1).method == "adaptive"
        greedy = KCenterGreedy(x, 0.1, method="greedy", project=False)
        assert len(greedy.select_coreset_idxs()) == 30
        assert greedy.steps == {"dense": 30, "pruned": 0} and greedy.switches == []

    def test_errors(self):
        with pytest.raises(ValueError, match="2-D"):
            KCenterGreedy(torch.rand(2, 3, 4), 0.1)
        with pytest.raises(ValueError, match="sampling_ratio"):
            KCenterGreedy(torch.rand(10, 3), 0.0)
        with pytest.raises(ValueError, match=r"sampling_ratio=0.05 is outside \[1/N, 1\] = \[0.1, 1\]"):
            KCenterGreedy(torch.rand(10, 3), 0.05)
        bad = torch.rand(10, 3)
        bad[0, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or inf"):
            KCenterGreedy(bad, 0.5)
        with pytest.raises(ValueError, match="method"):
            KCenterGreedy(torch.rand(10, 3), 0.5, method="fast")
        with pytest.raises(ValueError, match="switch_fraction"):
            KCenterGreedy(torch.rand(10, 3), 0.5, switch_fraction=0.0)


# ============================================================================ NearestNeighbors
class TestNearestNeighbors:
    @pytest.mark.parametrize("backend", ["torch", "faiss"])
    @pytest.mark.parametrize("k", [1, 5])
    def test_matches_sklearn(self, backend, k):
        if backend == "faiss" and not nn_module.faiss_available():
            pytest.skip("faiss not installed")
        g = torch.Generator().manual_seed(0)
        bank, queries = torch.randn(500, 24, generator=g) + 10, torch.randn(120, 24, generator=g) + 10
        ours = NearestNeighbors(backend, max_block_elements=4096).fit(bank)  # forces many blocks
        distances, indices = ours.search(queries, k=k)
        ref = sklearn.neighbors.NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank.double().numpy())
        ref_dist, ref_idx = ref.kneighbors(queries.double().numpy())
        assert distances.shape == indices.shape == (120, k) and indices.dtype == torch.int64
        np.testing.assert_array_equal(indices.numpy(), ref_idx)
        np.testing.assert_allclose(distances.numpy(), ref_dist, rtol=1e-5, atol=1e-4)

    def test_half_precision_reranks_exactly(self):
        g = torch.Generator().manual_seed(1)
        bank, queries = torch.randn(800, 32, generator=g), torch.randn(100, 32, generator=g)
        exact = NearestNeighbors("torch").fit(bank).search(queries, k=3)
        low = NearestNeighbors("torch", half_precision=True).fit(bank).search(queries, k=3)
        assert torch.equal(low[1], exact[1])
        torch.testing.assert_close(low[0], exact[0])

    def test_approximate_faiss_indexes(self):
        if not nn_module.faiss_available():
            pytest.skip("faiss not installed")
        g = torch.Generator().manual_seed(2)
        bank, queries = torch.randn(2000, 16, generator=g), torch.randn(200, 16, generator=g)
        exact = NearestNeighbors("torch").fit(bank).search(queries)[1]
        ivf_all = NearestNeighbors("faiss", index="ivf", nlist=16, nprobe=16).fit(bank).search(queries)[1]
        assert torch.equal(ivf_all, exact)  # probing every cell is exact
        hnsw = NearestNeighbors("faiss", index="hnsw").fit(bank).search(queries)[1]
        assert (hnsw == exact).double().mean() >= 0.9  # recall note: approximate

    def test_auto_backend_and_fallback(self, monkeypatch):
        bank = torch.randn(50, 4)
        expected = "faiss" if nn_module.faiss_available() else "torch"
        assert NearestNeighbors().fit(bank).backend_ == expected
        monkeypatch.setattr(nn_module, "faiss_available", lambda: False)
        monkeypatch.setattr(nn_module, "_FAISS_NOTICE_SHOWN", False)
        with pytest.warns(UserWarning, match="faiss-cpu"):
            assert NearestNeighbors().fit(bank).backend_ == "torch"
        with pytest.raises(ImportError, match="faiss-cpu"):
            NearestNeighbors("faiss")

    def test_errors(self):
        with pytest.raises(NotFittedError, match="fit"):
            NearestNeighbors("torch").search(torch.rand(2, 3))
        nn = NearestNeighbors("torch").fit(torch.rand(4, 3))
        with pytest.raises(ValueError, match="k must be"):
            nn.search(torch.rand(2, 3), k=5)
        with pytest.raises(ValueError, match="expected shape"):
            nn.search(torch.rand(2, 4))
        with pytest.raises(ValueError, match="backend"):
            NearestNeighbors("annoy")


# ============================================================================ GaussianBlur2d
class TestGaussianBlur2d:
    # torch border type -> the scipy.ndimage mode with the same padding (NOT the same name!).
    MODE_MAP = {"reflect": "mirror", "replicate": "nearest", "circular": "wrap", "constant": "constant"}

    @pytest.mark.parametrize("method", ["matmul", "conv"])
    @pytest.mark.parametrize("border_type", list(MODE_MAP))
    @pytest.mark.parametrize("sigma", [1.5, (2.0, 1.0)])
    def test_matches_scipy(self, border_type, sigma, method):
        x = torch.rand(2, 3, 40, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        blur = GaussianBlur2d(sigma, channels=3, border_type=border_type, method=method).double()
        sy, sx = sigma if isinstance(sigma, tuple) else (sigma, sigma)
        # scipy's radius int(truncate·σ + 0.5) with truncate=4 equals our default kernel radius.
        expected = scipy.ndimage.gaussian_filter(
            x.numpy(), sigma=(0, 0, sy, sx), mode=self.MODE_MAP[border_type], truncate=4.0
        )
        np.testing.assert_allclose(blur(x).numpy(), expected, atol=1e-6)  # float32 kernel

    def test_matrix_form_equals_the_convolutions_and_follows_the_input_size(self):
        blur, conv = GaussianBlur2d(4.0), GaussianBlur2d(4.0, method="conv")
        for shape in [(5, 1, 224, 224), (2, 1, 64, 48), (5, 1, 224, 224)]:  # sizes change, come back
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(blur(x), conv(x), atol=1e-5, rtol=1e-5)
        blur_y, blur_x = blur.blur_matrices(224, 224, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(blur_y.sum(dim=1), torch.ones(224))  # each output row: weights sum to 1
        assert blur_y.shape == blur_x.shape == (224, 224)
        assert list(blur.state_dict()) == ["kernel_y", "kernel_x"]  # the cache is never saved
        with pytest.raises(ValueError, match="method"):
            GaussianBlur2d(1.0, method="fft")

    def test_scipy_reflect_is_not_torch_reflect(self):
        x = torch.rand(1, 1, 20, 20, dtype=torch.float64)
        ours = GaussianBlur2d(2.0, border_type="reflect").double()(x).numpy()
        half_sample = scipy.ndimage.gaussian_filter(x.numpy(), 2.0, mode="reflect")
        assert not np.allclose(ours, half_sample, atol=1e-4)

    def test_kernel_and_shapes(self):
        blur = GaussianBlur2d(4.0, channels=2)
        assert blur.kernel_size == (33, 33) and blur.kernel.shape == (2, 1, 33, 33)
        torch.testing.assert_close(blur.kernel.sum(dim=(1, 2, 3)), torch.ones(2))
        x = torch.rand(3, 2, 64, 48)
        assert blur(x).shape == x.shape
        valid = GaussianBlur2d(1.0, channels=2, kernel_size=(5, 3), padding="valid")
        assert valid(x).shape == (3, 2, 60, 46)
        torch.testing.assert_close(
            GaussianBlur2d(1.0)(torch.full((1, 1, 16, 16), 7.0)), torch.full((1, 1, 16, 16), 7.0)
        )  # normalised: flat stays flat
        raw = GaussianBlur2d(1.0, normalize=False)
        assert raw.kernel.max() == 1.0
        fresh = state_dict_round_trip(blur, GaussianBlur2d(4.0, channels=2))
        assert torch.equal(fresh(x), blur(x))

    def test_errors(self):
        with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
            GaussianBlur2d(1.0)(torch.rand(1, 3, 8, 8))
        with pytest.raises(ValueError, match="odd"):
            GaussianBlur2d(1.0, kernel_size=4)
        with pytest.raises(ValueError, match="mirror"):
            GaussianBlur2d(1.0, border_type="mirror")
        with pytest.raises(ValueError, match="16×16"):
            GaussianBlur2d(4.0)(torch.rand(1, 1, 10, 10))


# ============================================================================ MultiVariateGaussian
class TestMultiVariateGaussian:
    def embeddings(self, batch=30, seed=0):
        g = torch.Generator().manual_seed(seed)
        mixing = torch.randn(4, 4, generator=g)
        x = torch.einsum("cd,bdhw->bchw", mixing, torch.randn(batch, 4, 3, 2, generator=g)) + 2.0
        return x  # (B, C=4, h=3, w=2)

    def test_matches_numpy_and_scipy(self):
        x = self.embeddings()
        mvg = MultiVariateGaussian()
        mean, inv_cov = mvg.fit(x)
        assert mean.shape == (4, 6) and inv_cov.shape == (6, 4, 4)
        flat = x.double().numpy().reshape(30, 4, 6)
        for p in range(6):
            samples = flat[:, :, p]  # (B, C)
            np.testing.assert_allclose(mean[:, p].numpy(), samples.mean(axis=0), rtol=1e-6)
            expected_inv = np.linalg.inv(np.cov(samples, rowvar=False) + 0.01 * np.eye(4))
            np.testing.assert_allclose(inv_cov[p].numpy(), expected_inv, rtol=1e-4, atol=1e-5)

        test = self.embeddings(batch=3, seed=1)
        distances = mvg.mahalanobis(test)
        assert distances.shape == (3, 3, 2)
        test_flat = test.double().numpy().reshape(3, 4, 6)
        for b in range(3):
            for p in range(6):
                expected = scipy.spatial.distance.mahalanobis(
                    test_flat[b, :, p],
                    flat[:, :, p].mean(axis=0),
                    np.linalg.inv(np.cov(flat[:, :, p], rowvar=False) + 0.01 * np.eye(4)),
                )
                assert abs(distances[b].flatten()[p].item() - expected) < 1e-4 * max(1.0, expected)

    def test_streaming_equals_tensor(self):
        x = self.embeddings(batch=25)
        whole = MultiVariateGaussian().fit(x)
        streamed = MultiVariateGaussian().fit(iter(x.split(7)))
        for a, b in zip(whole, streamed):
            torch.testing.assert_close(a, b)
        chunked = MultiVariateGaussian(batch_chunk=4)(x)  # forward == fit
        torch.testing.assert_close(chunked[1], whole[1])

    def test_state_dict_round_trip(self):
        x = self.embeddings()
        mvg = MultiVariateGaussian()
        mvg.fit(x)
        fresh = state_dict_round_trip(mvg, MultiVariateGaussian())
        assert torch.equal(fresh.mahalanobis(x), mvg.mahalanobis(x))

    def test_errors(self):
        with pytest.raises(ValueError, match="at least 2 samples"):
            MultiVariateGaussian().fit(torch.rand(1, 4, 3, 3))
        bad = torch.rand(5, 4, 3, 3)
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            MultiVariateGaussian().fit(bad)
        with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
            MultiVariateGaussian().fit(torch.rand(5, 4, 9))
        with pytest.raises(NotFittedError, match="fit"):
            MultiVariateGaussian().mahalanobis(torch.rand(2, 4, 3, 3))
        mvg = MultiVariateGaussian()
        mvg.fit(torch.rand(5, 4, 3, 3))
        with pytest.raises(ValueError, match="C=4"):
            mvg.mahalanobis(torch.rand(2, 5, 3, 3))
        with pytest.raises(ValueError, match="same"):
            MultiVariateGaussian().fit([torch.rand(3, 4, 3, 3), torch.rand(3, 4, 2, 3)])


# ============================================================================ SingleClassGaussian
class TestSingleClassGaussian:
    def test_matches_numpy(self):
        samples = correlated_data(60, 5, seed=9).float()  # (N, D), full rank
        scg = SingleClassGaussian()
        scg.fit(samples.T)  # transposed layout (D, N)
        x = samples.double().numpy()
        mean = x.mean(axis=0)
        covariance = np.cov(x, rowvar=False, bias=True)  # divided by N
        queries = correlated_data(7, 5, seed=10).double().numpy()
        delta = queries - mean
        expected = np.einsum("nd,de,ne->n", delta, np.linalg.pinv(covariance), delta) + np.linalg.slogdet(covariance)[1]
        ours = scg.score_samples(torch.from_numpy(queries).float()).double().numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(scg.mean_vec.numpy(), mean, rtol=1e-5)

        convenience = SingleClassGaussian().fit_samples(samples)
        torch.testing.assert_close(convenience.score_samples(samples), scg.score_samples(samples))
        fresh = state_dict_round_trip(scg, SingleClassGaussian())
        assert torch.equal(fresh.score_samples(samples), scg.score_samples(samples))

    def test_rank_deficient_is_finite(self):
        samples = torch.randn(3, 6)  # N < D
        scores = SingleClassGaussian().fit_samples(samples).score_samples(torch.randn(4, 6))
        assert torch.isfinite(scores).all()

    def test_errors(self):
        with pytest.raises(NotFittedError, match="fit"):
            SingleClassGaussian().score_samples(torch.rand(2, 3))
        with pytest.raises(ValueError, match="at least 2 samples"):
            SingleClassGaussian().fit(torch.rand(3, 1))
        with pytest.raises(ValueError, match="transposed"):
            SingleClassGaussian().fit(torch.rand(3))
        with pytest.raises(ValueError, match="NaN"):
            SingleClassGaussian().fit(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
        scg = SingleClassGaussian().fit(torch.rand(3, 10))
        with pytest.raises(ValueError, match=r"\(N, 3\)"):
            scg.score_samples(torch.rand(2, 4))
        with pytest.raises(ValueError, match="identical"):
            SingleClassGaussian().fit(torch.ones(3, 5))


def test_channel_statistics_streamed_equal_numpy_over_all_maps():
    from adlearn.components import ChannelStatistics

    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(b, 5, 3, 4, generator=generator) * torch.arange(1, 6).view(1, 5, 1, 1) + 7 for b in (2, 3, 1)
    ]
    batches[0][:, 4] = batches[1][:, 4] = batches[2][:, 4] = 2.0  # a dead channel
    statistics = ChannelStatistics()
    for maps in batches:
        statistics.update(maps)
    mean, std = statistics.mean_std()
    everything = torch.cat(batches).numpy().transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), everything.mean(1), rtol=1e-6)
    np.testing.assert_allclose(std[:4].numpy(), everything[:4].std(1), rtol=1e-5)
    assert std[4] == pytest.approx(1e-6) and mean.dtype == std.dtype == torch.float32
    with pytest.raises(ValueError, match="no maps"):
        ChannelStatistics().mean_std()
