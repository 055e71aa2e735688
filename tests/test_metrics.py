"""Metrics against scikit-learn / SciPy (the oracles) and against PRO curves worked out by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn import metrics as skm

from adlearn.metrics import (
    MinMaxNormalizer,
    aupro,
    compute_all,
    f1_max,
    image_auroc,
    min_max_normalize,
    normalize_with_threshold,
    pixel_auroc,
    pro_curve,
    roc_curve,
)


def _tied_data(seed: int, n: int = 200, decimals: int = 1):
    """Labels and scores with many ties (scores rounded), anomalies scoring a bit higher."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + 0.8 * labels, decimals)
    return labels, scores


# --------------------------------------------------------------------------------------------
# ROC / AUROC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_image_auroc_matches_sklearn_with_ties(seed, decimals):
    labels, scores = _tied_data(seed, decimals=decimals)
    expected = skm.roc_auc_score(labels, scores)
    assert image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_is_the_mann_whitney_statistic():
    labels, scores = _tied_data(7)
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    n_pairs = (labels == 1).sum() * (labels == 0).sum()
    assert image_auroc(labels, scores) == pytest.approx(u / n_pairs)


def test_image_auroc_simple_values():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie is half credit
    assert isinstance(image_auroc([0, 1], [0.0, 1.0]), float)


def test_accepts_torch_tensors():
    labels, scores = _tied_data(3)
    expected = skm.roc_auc_score(labels, scores)
    tensor_scores = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    got = image_auroc(torch.tensor(labels), tensor_scores)
    assert got == pytest.approx(expected, abs=1e-12)  # float32 keeps 1-decimal ties tied


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((6, 16, 16)) < 0.1
    maps = np.round(rng.random((6, 16, 16)) + 0.3 * masks, 2).astype(np.float32)
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # (N, 1, H, W) masks/maps and torch inputs are accepted
    got = pixel_auroc(torch.tensor(masks[:, None]).float(), torch.tensor(maps[:, None]))
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed):
    labels, scores = _tied_data(seed)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thresholds[0] == np.inf
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])


# --------------------------------------------------------------------------------------------
# F1-max
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_sklearn(seed):
    labels, scores = _tied_data(seed)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nanmax(2 * precision * recall / (precision + recall))
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(expected, abs=1e-12)
    # the returned threshold achieves it, with the ">= threshold" rule
    assert skm.f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)
    assert threshold in scores


def test_f1_max_threshold_equals_sklearn_argmax_without_ties():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1])
    assert f1_max(labels, scores)[1] == thresholds[np.argmax(f1)]


def test_f1_max_simple_values():
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == (1.0, 0.3)
    # all positive: rejecting everything is perfect; the lowest threshold is chosen
    assert f1_max([1, 1], [0.2, 0.7]) == (1.0, 0.2)


# --------------------------------------------------------------------------------------------
# AUPRO: hand-computed PRO curves
# --------------------------------------------------------------------------------------------

# One 4x4 image. Region A (4 pixels, top-left 2x2 block) and region B (2 pixels, bottom row).
# The other 10 pixels are normal, so each normal pixel above the threshold adds 0.1 to the FPR;
# each A pixel adds 1/(2*4) = 0.125 to the PRO and each B pixel 1/(2*2) = 0.25.
MASK_4X4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]])
REGION_A = np.zeros((4, 4), bool)
REGION_A[:2, :2] = True
REGION_B = np.zeros((4, 4), bool)
REGION_B[3, 2:] = True
MAP_4X4 = np.array(
    [
        [0.90, 0.80, 0.85, 0.60],  # A: 0.9, 0.8 | normal: 0.85, 0.6
        [0.30, 0.20, 0.50, 0.45],  # A: 0.3, 0.2 | normal: 0.5, 0.45
        [0.40, 0.35, 0.25, 0.15],  # normal
        [0.05, 0.00, 0.70, 0.10],
    ]  # normal: 0.05, 0.0 | B: 0.7, 0.1
)


def _hand_aupro(mask_regions, normal, scores, fpr_limit):
    """Reference: PRO and FPR evaluated threshold by threshold, with explicit region masks."""
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    fpr = np.array([(scores[normal] >= t).mean() for t in thresholds])
    pro = np.array([np.mean([(scores[r] >= t).mean() for r in mask_regions]) for t in thresholds])
    keep = fpr <= fpr_limit
    x = np.append(fpr[keep], fpr_limit)
    # the cut point: in these cases fpr_limit never falls on a vertical step of the curve, where
    # np.interp's answer for a repeated abscissa would be ambiguous
    y = np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
    return np.trapezoid(y, x) / fpr_limit


def test_aupro_hand_computed_case():
    # Walking down the thresholds (FPR, PRO):
    #   0.90 A -> (0, .125); 0.85 N -> (.1, .125); 0.80 A -> (.1, .25); 0.70 B -> (.1, .5);
    #   0.60 N -> (.2, .5); 0.50 N -> (.3, .5) ...
    # area on [0, .3] = .1*.125 + .1*.5 + .1*.5 = .1125, normalised: .1125 / .3 = .375
    assert aupro(MASK_4X4[None], MAP_4X4[None]) == pytest.approx(0.375, abs=1e-12)
    normal = MASK_4X4 == 0
    assert _hand_aupro([REGION_A, REGION_B], normal, MAP_4X4, 0.3) == pytest.approx(0.375)


def test_pro_curve_hand_computed_points():
    fpr, pro, thresholds = pro_curve(MASK_4X4[None], MAP_4X4[None])
    np.testing.assert_allclose(fpr[:7], [0, 0, 0.1, 0.1, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(pro[:7], [0, 0.125, 0.125, 0.25, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(thresholds[:7], [np.inf, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5])
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0)


def test_aupro_interpolates_at_the_fpr_limit_on_a_tie():
    # B's 0.70 pixel now ties with the normal 0.60 pixel: at threshold 0.6 the FPR goes .1 -> .2
    # and the PRO .25 -> .5 together, a diagonal segment. Cut at FPR .15 (PRO .375 there):
    # area = .1*.125 + .05*(.25 + .375)/2 = .028125, normalised: .028125 / .15 = .1875
    tied = MAP_4X4.copy()
    tied[3, 2] = 0.60
    assert aupro(MASK_4X4[None], tied[None], fpr_limit=0.15) == pytest.approx(0.1875, abs=1e-12)
    # cutting on the flat part: area up to .25 = .1*.125 + .1*(.25+.5)/2 + .05*.5 = .075
    assert aupro(MASK_4X4[None], tied[None], fpr_limit=0.25) == pytest.approx(0.075 / 0.25)


def test_aupro_regions_are_per_image_and_normal_pixels_span_all_images():
    # image 0: a 4-pixel region; image 1: a 2-pixel region at the same place as part of it;
    # image 2: a good image. 3*16 - 6 = 42 normal pixels.
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 4, 4), int)
    masks[0, :2, :2] = 1
    masks[1, 0, :2] = 1
    maps = rng.permutation(48).reshape(3, 4, 4) / 48.0  # distinct scores
    regions = [np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)]
    regions[0][0, :2, :2] = True
    regions[1][1, 0, :2] = True
    expected = _hand_aupro(regions, masks == 0, maps, 0.3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_uses_8_connectivity_like_the_mvtec_reference():
    # Pixels (0,0) and (1,1) touch diagonally; (1,2) touches (1,1). 8-connected: one 3-pixel
    # region; 4-connected: {(0,0)} and {(1,1),(1,2)}.
    mask = np.zeros((1, 5, 5), int)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = 1
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = 1.0  # only (0,0) is found before any false positive
    # the first point after (0, 0): (FPR 0, PRO 1/3) with 8-, (0, 1/2) with 4-connectivity
    fpr8, pro8, _ = pro_curve(mask, maps)
    fpr4, pro4, _ = pro_curve(mask, maps, connectivity=4)
    assert (fpr8[1], pro8[1]) == (0.0, pytest.approx(1 / 3))
    assert (fpr4[1], pro4[1]) == (0.0, pytest.approx(1 / 2))
    assert aupro(mask, maps) != pytest.approx(aupro(mask, maps, connectivity=4))


def test_aupro_perfect_and_inverted_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), int)
    masks[0, 2:9, 3:7] = 1
    masks[1, 20:30, 20:22] = 1
    masks[1, 0:2, 0:2] = 1
    masks[2, 10:12, 10:30] = 1
    noise = rng.random(masks.shape)
    perfect = masks + 0.5 * noise  # every defect pixel above every normal pixel
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-9)
    assert aupro(masks, -perfect) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((2, 12, 12), int)
    masks[0, 1:4, 1:5] = 1  # 12 pixels
    masks[0, 8:10, 8:9] = 1  # 2 pixels
    masks[1, 5:11, 2:4] = 1  # 12 pixels
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)  # coarse: many ties
    regions = []
    for image, (rows, cols) in [
        (0, (slice(1, 4), slice(1, 5))),
        (0, (slice(8, 10), slice(8, 9))),
        (1, (slice(5, 11), slice(2, 4))),
    ]:
        r = np.zeros(masks.shape, bool)
        r[image, rows, cols] = True
        regions.append(r)
    for limit in (0.3, 0.05, 1.0):
        expected = _hand_aupro(regions, masks == 0, maps, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_binned_approximation_converges_to_exact():
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 32, 32), int)
    masks[0, 3:10, 3:12] = 1
    masks[2, 15:18, 0:25] = 1
    maps = rng.random(masks.shape) + 0.7 * masks
    exact = aupro(masks, maps)
    assert abs(aupro(masks, maps, num_thresholds=20) - exact) < 0.05
    assert abs(aupro(masks, maps, num_thresholds=20000) - exact) < 1e-3


def test_aupro_without_regions_warns_and_returns_nan():
    with pytest.warns(RuntimeWarning, match="no.*anomalous regions|without anomalous regions"):
        value = aupro(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4)))
    assert np.isnan(value)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def test_min_max_normalize_numpy_and_torch():
    scores = np.array([-1.0, 0.0, 2.0, 4.0, 5.0])
    np.testing.assert_allclose(min_max_normalize(scores, 0.0, 4.0), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(min_max_normalize(scores, 0.0, 4.0, clip=False), [-0.25, 0.0, 0.5, 1.0, 1.25])
    out = min_max_normalize(torch.tensor([0.0, 1.0, 3.0]), 1.0, 3.0)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(min_max_normalize([1, 2, 3], 1, 3), [0.0, 0.5, 1.0])


def test_normalize_with_threshold_maps_threshold_to_one_half():
    scores = np.array([0.0, 3.0, 5.0, 10.0])
    out = normalize_with_threshold(scores, threshold=3.0, min_value=0.0, max_value=10.0)
    np.testing.assert_allclose(out, [0.2, 0.5, 0.7, 1.0])
    # the decision is preserved exactly
    np.testing.assert_array_equal(out >= 0.5, scores >= 3.0)


def test_min_max_normalizer():
    norm = MinMaxNormalizer().fit(np.array([2.0, 4.0, 6.0]))
    assert (norm.min_value, norm.max_value, norm.threshold) == (2.0, 6.0, None)
    np.testing.assert_allclose(norm(np.array([1.0, 3.0, 6.0, 9.0])), [0.0, 0.25, 1.0, 1.0])
    with_t = MinMaxNormalizer().fit(torch.tensor([2.0, 4.0, 6.0]), threshold=5.0)
    torch.testing.assert_close(with_t(torch.tensor([5.0, 6.0])), torch.tensor([0.5, 0.75]))
    np.testing.assert_allclose(MinMaxNormalizer().fit_transform([0.0, 5.0, 10.0]), [0, 0.5, 1])


def test_normalizer_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        MinMaxNormalizer()(np.zeros(3))
    with pytest.raises(ValueError, match="identical"):
        MinMaxNormalizer().fit(np.ones(4))
    with pytest.raises(ValueError, match="greater than"):
        min_max_normalize(np.ones(3), 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# compute_all
# --------------------------------------------------------------------------------------------


def test_compute_all_image_only():
    labels, scores = _tied_data(0)
    results = compute_all(labels, scores)
    assert set(results) == {
        "image_auroc",
        "image_f1max",
        "image_f1max_threshold",
        "pixel_auroc",
        "pixel_aupro",
        "pixel_f1max",
    }
    assert results["image_auroc"] == image_auroc(labels, scores)
    assert (results["image_f1max"], results["image_f1max_threshold"]) == f1_max(labels, scores)
    assert results["pixel_auroc"] is results["pixel_aupro"] is results["pixel_f1max"] is None


def test_compute_all_with_maps_matches_the_single_metrics():
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 16, 16), int)
    masks[3:, 4:9, 5:10] = 1
    masks[5, 0:2, 0:3] = 1
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    labels = masks.reshape(6, -1).max(axis=1)
    scores = maps.reshape(6, -1).max(axis=1)
    results = compute_all(labels, scores, torch.tensor(masks), torch.tensor(maps))
    assert results["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-15)
    assert results["pixel_aupro"] == pytest.approx(aupro(masks, maps), abs=1e-15)
    assert results["pixel_f1max"] == pytest.approx(f1_max(masks, maps)[0], abs=1e-15)
    assert all(isinstance(v, float) for v in results.values())
    assert compute_all(labels, scores, masks=masks)["pixel_auroc"] is None  # maps missing


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_only_one_class_is_named():
    message = "AUROC needs both normal and anomalous samples; got only label 0"
    with pytest.raises(ValueError, match=message):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="got only label 1"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="pixel AUROC needs both .* pixels; got only label 0"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="got only label 0"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="got only label 0"):
        compute_all([0, 0], [0.1, 0.2])


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"labels \(3,\) and scores \(4,\)"):
        image_auroc([0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        pixel_auroc(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        aupro(np.ones((2, 4, 4)), np.ones((3, 4, 4)))


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    maps = np.zeros((1, 3, 3))
    maps[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="maps contain 1 NaN"):
        aupro(np.eye(3)[None], maps)


def test_non_binary_labels_and_bad_arguments():
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="mask > 0.5"):
        pixel_auroc(np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.eye(3)[None], np.eye(3)[None], fpr_limit=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        aupro(np.eye(3)[None], np.eye(3)[None], connectivity=6)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(np.eye(3)[None], np.eye(3)[None], num_thresholds=1)


def test_importing_metrics_is_light():
    code = (
        "import sys, adlearn.metrics; "
        "heavy = [m for m in ('torch', 'matplotlib', 'sklearn', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
