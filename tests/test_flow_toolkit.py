"""The flow toolkit of C-Flow, CS-Flow and U-Flow: positional encoding, the conditional coupling on fibers,
the cross-scale flow (inverse and log-det against autograd) and the NFA (against the binomial law on
Gaussian fields whose false-alarm rate is known exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from adlearn.components.cross_scale_flow import (
    CrossConvolutions,
    CrossScaleCoupling,
    CrossScaleFlow,
    ParallelPermute,
    soft_clamp_log_scale,
)
from adlearn.components.flow import AllInOneBlock, SequenceFlow, subnet_fc
from adlearn.components.nfa import (
    binomial_log10_tail,
    candidate_counts,
    log10_probability_of_window,
    log_nfa,
    nfa_segmentation,
    window_for_scale,
)
from adlearn.components.positional_encoding import positional_encoding_2d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# =============================================================================== positional encoding
def test_positional_encoding_hand_values():
    code = positional_encoding_2d(8, 3, 5)  # D = 8: ω = 1, 10000^(-2/4) = 0.01 per axis
    assert code.shape == (8, 3, 5) and code.dtype == torch.float32
    y, x = 2, 4
    expected = [
        math.sin(x),
        math.cos(x),
        math.sin(0.01 * x),
        math.cos(0.01 * x),
        math.sin(y),
        math.cos(y),
        math.sin(0.01 * y),
        math.cos(0.01 * y),
    ]
    assert code[:, y, x].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(code[:4, 0], code[:4, 2]) and torch.equal(code[4:, :, 0], code[4:, :, 3])  # x / y halves
    flat = code.flatten(1).T  # every position has its own code
    assert torch.cdist(flat, flat).add(torch.eye(15)).min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_2d(6, 2, 2)


# =============================================================================== conditional coupling on fibers
def test_conditional_all_in_one_block_on_fibers_inverts_and_log_det_matches_autograd():
    # C-Flow's decoder: (N, C) fibers conditioned on (N, P) positional codes; MLP subnets Linear(c, 2c).
    torch.manual_seed(0)
    flow = SequenceFlow(
        [
            AllInOneBlock([(6,)], dims_c=[(8,)], subnet_constructor=subnet_fc(hidden_ratio=2.0), affine_clamping=1.9)
            for _ in range(3)
        ]
    ).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    fibers = torch.randn(5, 6, dtype=torch.float64)
    codes = positional_encoding_2d(8, 5, 1, dtype=torch.float64)[:, :, 0].T  # 5 positions (5, 8)
    z, log_det = flow(fibers, c=[codes])
    back, _ = flow(z, c=[codes], rev=True)
    torch.testing.assert_close(back, fibers, atol=1e-10, rtol=0)
    for i in range(5):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], c=[codes[i : i + 1]])[0][0], fibers[i])  # noqa: B023
        assert float(torch.linalg.slogdet(jacobian).logabsdet) == pytest.approx(float(log_det[i].detach()), abs=1e-9)
    other, _ = flow(fibers, c=[codes.flip(0)])  # the condition moves the output
    assert not torch.allclose(other, z)


# =============================================================================== cross-scale flow
def _scales(channels=4, size=4, batch=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, size // 2**i, size // 2**i, generator=generator, dtype=dtype) for i in range(3)
    ]


def _randomise(module, scale=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def _flat_log_det(function, xs, i):
    """log|det ∂f/∂x| of sample i, all three scales flattened into one vector, by autograd."""
    shapes = [x.shape[1:] for x in xs]
    sizes = [math.prod(s) for s in shapes]

    def flat(vector):
        parts = [p.reshape(1, *s) for p, s in zip(torch.split(vector, sizes), shapes)]
        return torch.cat([y.flatten() for y in function(parts)[0]])

    jacobian = torch.autograd.functional.jacobian(flat, torch.cat([x[i].flatten() for x in xs]))
    return float(torch.linalg.slogdet(jacobian).logabsdet.detach())


@pytest.mark.parametrize("channels", [4, 5])
def test_cross_scale_coupling_inverts_and_log_det_matches_autograd(channels):
    coupling = CrossScaleCoupling(channels, hidden_channels=6, clamp=3.0).double()
    xs = _scales(channels)
    ys, log_det = coupling(xs)
    assert all(torch.equal(y, x) for y, x in zip(ys, xs)) and log_det.abs().max() == 0  # γ = 0: the identity
    _randomise(coupling, 1.0)
    ys, log_det = coupling(xs)
    assert not torch.allclose(ys[0], xs[0])
    back, log_det_rev = coupling(ys, rev=True)
    for b, x in zip(back, xs):
        torch.testing.assert_close(b, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_rev, -log_det)
    for i in range(2):
        assert _flat_log_det(coupling, xs, i) == pytest.approx(float(log_det[i].detach()), abs=1e-8)


def test_cross_scale_flow_inverts_and_log_det_matches_autograd():
    flow = CrossScaleFlow(channels=4, n_blocks=3, hidden_channels=6, clamp=3.0).double()
    assert [c.subnet1.hidden[0].kernel_size[0] for c in flow.couplings] == [3, 3, 5]  # kernel 5 at the end
    _randomise(flow, 0.2)
    xs = _scales(4)
    zs, log_det = flow(xs)
    back, log_det_rev = flow(zs, rev=True)
    for b, x in zip(back, xs):
        torch.testing.assert_close(b, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_det_rev, -log_det)
    for i in range(2):
        assert _flat_log_det(flow, xs, i) == pytest.approx(float(log_det[i].detach()), abs=1e-8)


def test_cross_convolutions_mix_neighbouring_scales_only():
    torch.manual_seed(0)
    subnet = CrossConvolutions(2, 3, hidden_channels=4)
    with torch.no_grad():
        subnet.gamma.fill_(1.0)
    xs = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    base = subnet(xs)
    assert [tuple(o.shape) for o in base] == [(1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 2, 2)]
    changed = subnet([xs[0], xs[1], xs[2] + 1.0])  # change only the coarsest scale
    assert torch.equal(changed[0], base[0])  # scale 0 sees scales 0 and 1 only
    assert not torch.allclose(changed[1], base[1]) and not torch.allclose(changed[2], base[2])


def test_soft_clamp_and_permutation_and_errors():
    s = torch.linspace(-100, 100, 101)
    clamped = soft_clamp_log_scale(s, 3.0)
    assert clamped.abs().max() < 3.0 and torch.allclose(
        soft_clamp_log_scale(torch.tensor([1e-4]), 3.0), torch.tensor([2e-4 / math.pi]), rtol=1e-4
    )  # slope 2/π (the reference's 0.636) at 0
    permute = ParallelPermute(6, seed=2)
    xs = _scales(6, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(permute(permute(xs), rev=True), xs))
    assert torch.equal(ParallelPermute(6, seed=2).orders, permute.orders)  # seeded with the block index
    with pytest.raises(ValueError, match="3 maps"):
        CrossScaleFlow(4, 1, 4)(xs[:2])
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        CrossScaleFlow(4, 1, 4)(xs)


# =============================================================================== NFA
def test_binomial_tail_against_the_sum_of_the_probabilities():
    for n, p in [(9, 0.5), (25, 0.3), (49, 0.5)]:
        for k in [0, 1, 5, n // 2, n]:
            exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
            assert float(binomial_log10_tail(k, n, p)) == pytest.approx(math.log10(exact), abs=1e-9)


def test_candidate_counts_against_brute_force():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 6, 7, generator=generator)
    counts, area = candidate_counts(z, window=3, probability_thr=0.5)
    tau = 0.454936423119572  # χ²(1) median
    candidates = (z.double() ** 2 >= tau).numpy()
    for b, c, y, x in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 5, 6), (1, 0, 2, 0)]:
        window = candidates[b, c, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        assert counts[b, c, y, x] == window.sum() and area[0, 0, y, x] == window.size
    assert [window_for_scale(7, s) for s in range(4)] == [7, 3, 3, 3]


def _achieved_level(n, p, alpha):
    """P_H0(P(K ≥ k) ≤ alpha) for K ~ Bin(n, p): the exact false-alarm rate of one window."""
    tails = binom.sf(np.arange(n + 1) - 1, n, p)  # P(K ≥ k), k = 0..n
    k_star = int(np.argmax(tails <= alpha)) if (tails <= alpha).any() else n + 1
    return float(binom.sf(k_star - 1, n, p))


@pytest.mark.parametrize("channels, n_channels", [("sum", 3), ("mean", 1)])
def test_window_false_alarm_rate_on_gaussian_fields_is_the_binomial_one(channels, n_channels):
    # Under H0 (z i.i.d. N(0, 1)) a window with n elements is flagged at level alpha with the exact
    # probability P(K ≥ k*); count it over many interior windows of many fields.
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(200, n_channels, 24, 24, generator=generator)
    log_prob = log10_probability_of_window(z, window=5, probability_thr=0.5, channels=channels)[:, 0, 2:-2, 2:-2]
    n = 25 * (n_channels if channels == "sum" else 1)
    for alpha in (0.05, 0.01):
        rate = float((log_prob <= math.log10(alpha) + 1e-9).double().mean())
        expected = _achieved_level(n, 0.5, alpha)
        assert expected <= alpha and rate == pytest.approx(expected, rel=0.15), (alpha, rate, expected)


def test_nfa_controls_the_number_of_false_alarms_per_image():
    # Expected detections per pure-noise image = Σ over regions of the exact level at ε / N_tests:
    # at most ε, and measured equal to the exact value (borders included, their n is smaller).
    generator = torch.Generator().manual_seed(1)
    fields = torch.randn(400, 1, 16, 16, generator=generator)
    epsilon = 30.0
    (per_region,) = log_nfa([fields], window_size=3, channels="sum")
    detections = (per_region < math.log10(epsilon)).double().sum(dim=(1, 2, 3))  # per image
    _, area = candidate_counts(fields[:1], 3)
    expected = sum(_achieved_level(int(n), 0.5, epsilon / 256) for n in area.flatten().tolist())
    assert expected <= epsilon
    assert float(detections.mean()) == pytest.approx(expected, rel=0.2)
    (strict,) = log_nfa([fields], window_size=3, channels="sum")
    assert float((strict < 0).double().sum(dim=(1, 2, 3)).mean()) <= 1.0  # ε = 1


def test_nfa_segmentation_finds_a_planted_region_and_little_else():
    generator = torch.Generator().manual_seed(2)
    fine, coarse = torch.randn(20, 4, 16, 16, generator=generator), torch.randn(20, 4, 8, 8, generator=generator)
    fine[:, :, 4:12, 4:12] *= 5.0  # a region whose latents are too large
    coarse[:, :, 2:6, 2:6] *= 5.0
    log_nfa_map, mask = nfa_segmentation([fine, coarse], (32, 32), window_size=7)
    assert log_nfa_map.shape == mask.shape == (20, 32, 32) and mask.dtype == torch.bool
    inside = mask[:, 11:21, 11:21].float().mean()  # the region's centre
    outside = mask[:, 24:, :8].float().mean()
    assert inside > 0.9 and outside < 0.01, (inside, outside)
    clean, clean_mask = nfa_segmentation(
        [torch.randn(50, 4, 16, 16, generator=generator), torch.randn(50, 4, 8, 8, generator=generator)], (32, 32)
    )
    assert clean_mask.float().mean() < 0.01
    with pytest.raises(ValueError, match="epsilon"):
        nfa_segmentation([fine], (32, 32), epsilon=0)
    with pytest.raises(ValueError, match="channels"):
        log_nfa([fine], channels="max")


# =============================================================================== the conditional-flow widget
def test_conditional_toy_flow_moves_its_density_with_the_condition():
    from adlearn.widgets.conditional_flow import (
        conditional_flow_explore,
        conditional_flow_static_figure,
        conditional_flow_widget,
        conditional_log_likelihood,
        make_conditional_toy_data,
        train_conditional_toy_flow,
    )

    points, conditions = make_conditional_toy_data(2000, seed=0)
    flow, losses = train_conditional_toy_flow(points, conditions, steps=300, seed=0)
    assert losses[-20:].mean() < losses[:20].mean()
    # The same points score higher under their own condition than under the opposite one.
    with torch.no_grad():
        own = conditional_log_likelihood(flow, points[:500], conditions[:500])
        opposite = conditional_log_likelihood(flow, points[:500], (conditions[:500] + 0.5) % 1.0)
    assert float((own > opposite).float().mean()) > 0.95
    for condition in (0.0, 0.25, 0.6):
        result = conditional_flow_explore(flow, condition, grid_points=60)
        assert result["peak_error"] < 0.5, (condition, result["peak"], result["centre"])  # the peak follows c
        assert result["mass"] == pytest.approx(1.0, abs=0.05)  # still a density
    view = conditional_flow_widget(flow, condition=0.25)
    view.controls["condition"].value = 0.5
    assert view.n_updates == 2 and view.last_result["condition"] == 0.5
    assert len(conditional_flow_static_figure(flow, conditions=(0.0, 0.5)).axes) == 2
