"""`GroupedKNN`: a k-nearest-neighbour density score that never compares a sample with its own group
(reference: ``anomalib.models.video.ai_vad.density.GroupedKNNEstimator``).

AI-VAD (Reiss & Hoshen, AAAI 2023, Sec. 3.3 "Density estimation") scores the pose and deep attributes
of a region by its distance to the nearest training regions: close to many normal regions = normal.
The training regions come in *groups* — the video each was cut from — and consecutive frames of one
video hold almost the same object, so a training region's nearest neighbour is itself a frame later.
Scored that way, the training scores would all be ≈ 0 and say nothing about the scale of a normal
distance. Hence the grouping:

* ``score(x, group=g)`` — the mean Euclidean distance from ``x`` to its ``k`` nearest bank entries
  **outside group g** (``group=None``: the whole bank — a test region, from a video never seen);
* normalisation (leave-one-video-out) — at ``fit``, every training group's features are scored against
  the bank *without that group*; the min and max of those scores over all groups define
  ``s̃ = (s − min) / (max − min)``, so that a normal test region scores in about [0, 1] and the streams
  of different units (pixels per frame, CNN activations) can be summed.

The reference's ``predict`` takes its own ``n_neighbors=1`` default, which silently overrides the
constructor's value; here the constructor's ``n_neighbors`` is the one used (a deliberate difference).

Buffers after ``fit``: ``bank`` (N, D), ``bank_groups`` (N,) int64, ``score_min``, ``score_max``.
"""

from __future__ import annotations

import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin, check_fitted_rows

__all__ = ["GroupedKNN"]


class GroupedKNN(DynamicBufferMixin):
    """Mean distance to the ``n_neighbors`` nearest training features of other groups, min–max normalised.

    Args:
        n_neighbors: k.
        block_size: queries scored against the bank at once (memory only).
    """

    def __init__(self, n_neighbors: int = 1, block_size: int = 1024) -> None:
        super().__init__()
        if int(n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
        self.n_neighbors, self.block_size = int(n_neighbors), int(block_size)
        self.register_buffer("bank", torch.empty(0))
        self.register_buffer("bank_groups", torch.empty(0, dtype=torch.long))
        self.register_buffer("score_min", torch.tensor(0.0))
        self.register_buffer("score_max", torch.tensor(1.0))

    @property
    def is_fitted(self) -> bool:
        return self.bank.numel() > 0

    def fit(self, features: torch.Tensor, groups: torch.Tensor) -> GroupedKNN:
        """Store ``features`` (N, D) of groups ``groups`` (N,) and the leave-one-group-out min / max."""
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"GroupedKNN.fit expects a non-empty (N, D) tensor, got {tuple(features.shape)}")
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.shape != (len(features),):
            raise ValueError(f"groups must be (N,) = ({len(features)},), got {tuple(groups.shape)}")
        distinct = groups.unique()
        if len(distinct) < 2:
            raise ValueError(
                "GroupedKNN needs training features from at least 2 groups (videos): each group is scored "
                f"against the others to normalise the scores; got {len(distinct)}"
            )
        others = [int((groups != g).sum()) for g in distinct]
        if min(others) < self.n_neighbors:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} but leaving one group out keeps only {min(others)} features: "
                "give more training data or lower n_neighbors"
            )
        self.bank, self.bank_groups = features.detach().float().clone(), groups.to(features.device).clone()
        raw = torch.cat([self.score(features[groups == g], group=int(g), normalize=False) for g in distinct])
        self.score_min, self.score_max = raw.min(), raw.max()
        return self

    def score(self, features: torch.Tensor, group: int | None = None, normalize: bool = True) -> torch.Tensor:
        """(M, D) → (M,): mean distance to the k nearest bank entries outside ``group``, normalised."""
        check_fitted_rows(self.is_fitted, features, self.bank.shape[1] if self.is_fitted else 0, "GroupedKNN", "fit")
        bank = self.bank if group is None else self.bank[self.bank_groups != group]  # (N', D)
        scores = []
        for block in features.float().split(self.block_size):
            distances = torch.cdist(block, bank)  # (m, N')
            scores.append(distances.topk(self.n_neighbors, dim=1, largest=False).values.mean(dim=1))
        scores = torch.cat(scores) if scores else features.new_zeros(0)
        if normalize:
            scores = (scores - self.score_min) / (self.score_max - self.score_min).clamp(min=1e-12)
        return scores
