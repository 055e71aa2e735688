"""Vector quantisation with an exponential-moving-average codebook (VQ-VAE: van den Oord, Vinyals &
Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017, Sec. 3.2 and Appendix A.1).

Every position's feature vector z (D numbers) is replaced by the nearest of K codebook vectors e_k:

    k*(z) = argmin_k ‖z − e_k‖²,   q(z) = e_{k*}

The argmin has no gradient, so the encoder gets the decoder's gradient unchanged ("straight-through":
q = z + sg(e − z)), and a *commitment* loss β·‖z − sg(q)‖² (β = 0.25) keeps the encoder's outputs
close to the codes they pick. The codebook is not trained by gradient: each code moves to the running
mean of the vectors assigned to it (decay γ = 0.99),

    N_k ← γ N_k + (1 − γ) n_k,     m_k ← γ m_k + (1 − γ) Σ_{z → k} z,     e_k = m_k / N_k,

with N_k Laplace-smoothed (ε = 1e-5) so that a code nobody picks never divides by zero. DSR
(Zavrtanik et al., ECCV 2022) quantises its two feature levels with this layer (the reference:
``anomalib.models.image.dsr.torch_model.VectorQuantizer``).
(B, D, H, W) -> quantised (B, D, H, W), commitment loss (scalar), code indices (B, H, W)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizerEMA(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
    ):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.commitment_cost, self.decay, self.epsilon = commitment_cost, decay, epsilon
        embedding = torch.randn(num_embeddings, embedding_dim)
        self.register_buffer("embedding", embedding)  # (K, D): the codebook e_k
        self.register_buffer("cluster_size", torch.zeros(num_embeddings))  # N_k
        self.register_buffer("embedding_sum", embedding.clone())  # m_k

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """k*(z) for (N, D) vectors: argmin of ‖z‖² − 2 z·e_k + ‖e_k‖² (the ‖z‖² term does not matter)."""
        distances = self.embedding.pow(2).sum(1)[None, :] - 2 * flat @ self.embedding.t()  # (N, K)
        return distances.argmin(dim=1)

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step towards the mean of the vectors assigned to each code (training only)."""
        one_hot = F.one_hot(indices, self.num_embeddings).type_as(flat)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
        self.embedding.copy_(self.embedding_sum / smoothed[:, None])

    def quantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, H, W) -> their vectors (B, D, H, W)."""
        return self.embedding[indices].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if z.ndim != 4 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"expected (B, {self.embedding_dim}, H, W) features, got {tuple(z.shape)}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim).float()  # (B·H·W, D)
        indices = self.nearest(flat)
        if self.training:
            self.update_codebook(flat, indices)
        indices = indices.view(z.shape[0], z.shape[2], z.shape[3])  # (B, H, W)
        quantized = self.quantize(indices).type_as(z)
        loss = self.commitment_cost * F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()  # straight-through
        return quantized, loss, indices
