"""The EMA vector quantiser: nearest codes by brute force, the EMA update by hand, straight-through
gradients, the commitment loss, and no codebook change in eval mode."""

from __future__ import annotations

import pytest
import torch

from adlearn.components import VectorQuantizerEMA


def test_codes_are_the_nearest_by_brute_force():
    torch.manual_seed(0)
    quantizer = VectorQuantizerEMA(16, 4).eval()
    z = torch.randn(2, 4, 3, 5)
    quantized, _, indices = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, quantizer.embedding).argmin(1).view(2, 3, 5)
    assert torch.equal(indices, expected)
    assert torch.allclose(quantized, quantizer.embedding[expected].permute(0, 3, 1, 2), atol=1e-6)


def test_ema_update_by_hand():
    quantizer = VectorQuantizerEMA(2, 1, decay=0.5, epsilon=0.0)
    quantizer.embedding.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.embedding_sum.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.cluster_size.copy_(torch.tensor([1.0, 1.0]))
    z = torch.tensor([1.0, 2.0, 9.0]).view(1, 1, 1, 3)  # two vectors go to code 0, one to code 1
    quantizer.train()(z)
    # N = 0.5·[1, 1] + 0.5·[2, 1] = [1.5, 1];  m = 0.5·[0, 10] + 0.5·[3, 9] = [1.5, 9.5];  e = m / N
    assert quantizer.cluster_size.tolist() == pytest.approx([1.5, 1.0])
    assert quantizer.embedding_sum.flatten().tolist() == pytest.approx([1.5, 9.5])
    assert quantizer.embedding.flatten().tolist() == pytest.approx([1.0, 9.5])


def test_straight_through_gradient_commitment_loss_and_eval_mode():
    torch.manual_seed(1)
    quantizer = VectorQuantizerEMA(8, 3, commitment_cost=0.25)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    quantized, loss, _ = quantizer.eval()(z)
    assert float(loss.detach()) == pytest.approx(0.25 * float(((z - quantized) ** 2).mean().detach()), rel=1e-6)
    (quantized * torch.arange(12.0).view(1, 3, 2, 2)).sum().backward()
    assert torch.equal(z.grad, torch.arange(12.0).view(1, 3, 2, 2))  # the decoder's gradient, unchanged
    before = quantizer.embedding.clone()
    quantizer(torch.randn(1, 3, 2, 2))
    assert torch.equal(quantizer.embedding, before)  # eval: the codebook stays
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        quantizer(torch.randn(1, 4, 2, 2))
