"""`NearestNeighbors`: exact k-nearest-neighbour search in a memory bank (PatchCore, CFA, ...).

One small interface over two engines::

    nn = NearestNeighbors().fit(bank)              # bank: (M, D)
    distances, indices = nn.search(queries, k=1)   # (N, k) Euclidean distances, (N, k) int64

**torch backend** (any device). Squared distances expand into one matrix product,

    ‖q − b‖² = ‖q‖² − 2·q·bᵀ + ‖b‖²,

so a block of queries is scored against the whole bank with a single ``addmm``. ``‖q‖²`` is the
same for every bank entry of a query, so it is not needed to *rank* the bank; the returned
distances of the k winners are then recomputed directly as ``‖q − b‖`` (no cancellation error,
exact float32). Queries are processed in blocks of at most ``max_block_elements / M`` rows, so
memory stays bounded however big the bank is. Both bank and queries are shifted by the bank mean
first (distances do not change; the expansion loses less precision on centred data).
With ``half_precision=True`` the ranking matmul runs in bfloat16 (fast on CUDA tensor cores) and
the best ``k + rerank`` candidates are re-ranked with exact float32 distances.

**faiss backend** (CPU). ``IndexFlatL2`` is exact brute force with a tuned kernel; the returned
distances of its k winners are recomputed directly as well, so both backends report the same
numbers. ``index="ivf"`` (inverted lists: ``nprobe`` of ``nlist`` cells searched) and
``index="hnsw"`` (graph search) are approximate: they can miss the true nearest neighbour, which
*over*-estimates a PatchCore patch score. They only pay off for much larger banks than
MVTec's (recall and timings: docs/benchmarks.md); check recall against ``index="flat"`` on your data.

**backend="auto"**: torch for tensors on an accelerator; on CPU faiss when it imports, else torch
with a one-time notice (``pip install faiss-cpu``); faiss is the CPU default because it was
faster on all but single-image query batches (docs/benchmarks.md). anomalib
(``anomalib.models.image.patchcore.torch_model``) uses brute-force torch distances so models export
to ONNX; faiss is what the PatchCore paper used.
"""

from __future__ import annotations

import warnings

import torch

from adlearn.components.dynamic_buffer import NotFittedError

_FAISS_NOTICE_SHOWN = False


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class NearestNeighbors:
    """Exact (or optionally approximate, faiss IVF/HNSW) Euclidean k-NN search.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        index: faiss index type, ``"flat"`` (exact, default), ``"ivf"`` or ``"hnsw"``.
        nlist: IVF cells (default ≈ 4·√M). nprobe: IVF cells searched per query (default 16).
        hnsw_m: HNSW graph degree (default 32). ef_search: HNSW search breadth (default 64).
        half_precision: torch backend only: rank in bfloat16, re-rank candidates in float32.
        rerank: extra candidates kept for the float32 re-ranking (default 32).
        max_block_elements: size of one (queries × bank) distance block for the torch backend.
    """

    def __init__(
        self,
        backend: str = "auto",
        *,
        index: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 64,
        half_precision: bool = False,
        rerank: int = 32,
        max_block_elements: int = 2**24,
    ) -> None:
        if backend not in ("auto", "torch", "faiss"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
        if index not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"index must be 'flat', 'ivf' or 'hnsw', got {index!r}")
        if backend == "faiss" and not faiss_available():
            raise ImportError(
                "backend='faiss' needs the faiss package: pip install faiss-cpu (or use backend='torch')."
            )
        self.backend = backend
        self.index_type = index
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self.half_precision = half_precision
        self.rerank = rerank
        self.max_block_elements = max_block_elements
        self.backend_: str | None = None  # the engine actually used, set by fit
        self.bank: torch.Tensor | None = None  # (M, D) float32, centred (torch backend)
        self._offset: torch.Tensor | None = None  # (D,) bank mean
        self._bank_sq_norms: torch.Tensor | None = None  # (M,)
        self._faiss_index = None

    @property
    def device(self) -> torch.device | None:
        """Where the indexed bank lives (None before ``fit``)."""
        return getattr(self, "_device", None)

    # ------------------------------------------------------------------ fit
    def fit(self, bank: torch.Tensor) -> NearestNeighbors:
        """Index ``bank (M, D)``; returns ``self``."""
        bank = _check_matrix(bank, "bank")
        self.backend_ = self._resolve_backend(bank.device)
        self._device = bank.device
        self._dim = bank.shape[1]
        self._size = bank.shape[0]

        # Centre on the bank mean: Euclidean distances are unchanged, rounding error shrinks.
        self._offset = bank.mean(dim=0)  # (D,)
        centred = bank - self._offset  # (M, D)
        self.bank = centred  # (M, D), for exact distances
        if self.backend_ == "torch":
            self._bank_sq_norms = (centred * centred).sum(dim=1)  # (M,)
            self._faiss_index = None
        else:
            self._faiss_index = self._build_faiss_index(centred.cpu().contiguous().numpy())
        return self

    def _resolve_backend(self, device: torch.device) -> str:
        global _FAISS_NOTICE_SHOWN
        if self.backend != "auto":
            return self.backend
        if device.type != "cpu" or self.half_precision:
            return "torch"
        if self.index_type == "flat" and not faiss_available():
            if not _FAISS_NOTICE_SHOWN:
                warnings.warn(
                    "faiss is not installed; NearestNeighbors uses the (slower on CPU) "
                    "torch backend. `pip install faiss-cpu` for faster CPU search.",
                    stacklevel=3,
                )
                _FAISS_NOTICE_SHOWN = True
            return "torch"
        if not faiss_available():
            raise ImportError(f"index={self.index_type!r} needs faiss: pip install faiss-cpu")
        return "faiss"

    def _build_faiss_index(self, bank_np):
        import faiss

        num, dim = bank_np.shape
        if self.index_type == "flat":
            index = faiss.IndexFlatL2(dim)
        elif self.index_type == "ivf":
            nlist = self.nlist or max(1, min(num // 39, int(4 * num**0.5)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            index.train(bank_np)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m)
            index.hnsw.efSearch = self.ef_search
        index.add(bank_np)
        return index

    # ------------------------------------------------------------------ search
    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest bank entries of every query.

        Args:
            queries: ``(N, D)``.
            k: neighbours per query, ``1 <= k <= M``.

        Returns:
            ``distances (N, k)`` Euclidean, ascending, and ``indices (N, k)`` int64 into the bank,
            on the queries' device.
        """
        if self.backend_ is None:
            raise NotFittedError("NearestNeighbors is not fitted yet: call .fit(bank) first")
        queries = _check_matrix(queries, "queries", expected_dim=self._dim)
        if not 1 <= k <= self._size:
            raise ValueError(f"k must be between 1 and the bank size {self._size}, got k={k}")
        if self.backend_ == "faiss":
            distances, indices = self._search_faiss(queries, k)
        else:
            distances, indices = self._search_torch(queries, k)
        return distances.to(queries.device), indices.to(queries.device)

    def _search_faiss(self, queries: torch.Tensor, k: int):
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())  # same CPU budget as torch
        centred = (queries.to("cpu", torch.float32) - self._offset.cpu()).contiguous()
        _, indices = self._faiss_index.search(centred.numpy(), k)  # (N, k)
        indices = torch.from_numpy(indices)
        if (indices < 0).any():  # only approximate indexes can come back short
            raise RuntimeError(
                f"the faiss {self.index_type!r} index found fewer than k={k} "
                f"neighbours for some queries; raise nprobe / ef_search"
            )
        # faiss ranks with ‖q‖² + ‖b‖² − 2q·b too; report exact distances like the torch path
        # (in blocks, to bound the (b, k, D) gather).
        block = max(1, self.max_block_elements // (k * self._dim))
        parts = [
            self._exact_top_k(centred[s : s + block], indices[s : s + block], k)
            for s in range(0, centred.shape[0], block)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _search_torch(self, queries: torch.Tensor, k: int):
        bank = self.bank
        queries = queries.to(bank.device, torch.float32) - self._offset  # (N, D)
        num_candidates = min(self._size, k + self.rerank) if self.half_precision else k
        # Rows per block: bound both the (b, M) score block and the (b, c, D) re-ranking gather.
        block = max(
            1, min(self.max_block_elements // self._size, self.max_block_elements // (num_candidates * self._dim))
        )
        if self.half_precision:
            bank_low = bank.to(torch.bfloat16)
            norms_low = self._bank_sq_norms.to(torch.bfloat16)

        all_distances, all_indices = [], []
        for start in range(0, queries.shape[0], block):
            chunk = queries[start : start + block]  # (b, D)
            # Ranking score ‖b‖² − 2·q·bᵀ (‖q‖² is constant per row and does not change ranks).
            if self.half_precision:
                scores = torch.addmm(
                    norms_low, chunk.to(torch.bfloat16), bank_low.T, beta=1, alpha=-2
                ).float()  # (b, M)
            else:
                scores = torch.addmm(self._bank_sq_norms, chunk, bank.T, beta=1, alpha=-2)
            if num_candidates == 1:
                candidates = scores.argmin(dim=1, keepdim=True)  # (b, 1)
            else:
                candidates = scores.topk(num_candidates, dim=1, largest=False).indices  # (b, c)
            del scores
            distances, indices = self._exact_top_k(chunk, candidates, k)
            all_distances.append(distances)
            all_indices.append(indices)
        return torch.cat(all_distances), torch.cat(all_indices)

    def _exact_top_k(self, queries: torch.Tensor, candidates: torch.Tensor, k: int):
        """Exact float32 ‖q − b‖ for each query's candidates ``(b, c)``; keep the k closest, sorted."""
        bank = self.bank.to(queries.device)
        exact = torch.linalg.vector_norm(bank[candidates] - queries[:, None, :], dim=2)  # (b, c)
        distances, order = exact.topk(k, dim=1, largest=False)  # ascending
        return distances, candidates.gather(1, order)

    def __repr__(self) -> str:
        state = f", fitted: {self._size}×{self._dim} on {self.backend_}" if self.backend_ else ""
        return f"NearestNeighbors(backend={self.backend!r}, index={self.index_type!r}{state})"


def _check_matrix(x, name: str, expected_dim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (rows, D), got {shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if expected_dim is not None and x.shape[1] != expected_dim:
        raise ValueError(
            f"{name} has {x.shape[1]} features but the bank has {expected_dim} (expected shape (N, {expected_dim}))"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x.to(torch.float32)
