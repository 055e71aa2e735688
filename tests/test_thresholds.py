"""Thresholds chosen without anomalies: from normal held-out scores, checked by brute force and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from adlearn.metrics import f1_max, metrics_at_threshold, threshold_for_false_alarm_rate, threshold_from_quantile


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(20))
def test_false_alarm_threshold_is_the_lowest_that_keeps_the_rate(seed, dtype):
    """Brute force over every candidate: the chosen threshold rejects at most `rate` of the normal scores,
    and every score value below it would reject more — compared in the scores' own precision (a model's
    float32 scores against the Python float threshold)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores = (np.round(rng.normal(size=n), 1) * 358.3).astype(dtype)  # rounding makes ties
    rate = float(rng.choice([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.99, 1.0]))
    threshold = threshold_for_false_alarm_rate(scores, rate)
    assert np.mean(scores >= threshold) <= rate + 1e-12
    for candidate in np.unique(scores):
        if candidate < threshold:
            assert np.mean(scores >= candidate) > rate, (candidate, threshold)


def test_false_alarm_threshold_by_hand():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert threshold_for_false_alarm_rate(scores, 0.0) == np.nextafter(1.0, np.inf)  # nothing rejected
    t = threshold_for_false_alarm_rate(scores, 0.2)  # two false alarms allowed: 0.9 and 1.0
    assert 0.8 < t <= 0.9 and np.sum(np.array(scores) >= t) == 2
    assert threshold_for_false_alarm_rate(scores, 1.0) == 0.1  # everything rejected


def test_quantile_threshold_is_numpy_quantile_and_bad_input_is_named():
    scores = np.arange(101, dtype=float)
    assert threshold_from_quantile(scores, 0.99) == pytest.approx(99.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        threshold_for_false_alarm_rate(scores, 1.5)
    with pytest.raises(ValueError, match="at least one normal score"):
        threshold_for_false_alarm_rate([], 0.1)
    with pytest.raises(ValueError, match="quantile"):
        threshold_from_quantile(scores, -0.1)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_at_threshold_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=80)
    labels[:2] = [0, 1]
    scores = rng.normal(size=80) + labels
    threshold = float(np.quantile(scores, 0.6))
    decided = (scores >= threshold).astype(int)
    got = metrics_at_threshold(labels, scores, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, decided).ravel()
    assert got["recall"] == pytest.approx(recall_score(labels, decided))
    assert got["precision"] == pytest.approx(precision_score(labels, decided))
    assert got["f1"] == pytest.approx(f1_score(labels, decided))
    assert got["false_alarm_rate"] == pytest.approx(fp / (fp + tn))


def test_f1_at_the_f1max_threshold_is_f1max():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    scores = rng.normal(size=50) + 1.5 * labels
    best, threshold = f1_max(labels, scores)
    assert metrics_at_threshold(labels, scores, threshold)["f1"] == pytest.approx(best)


def test_normal_holdout_is_disjoint_evenly_spaced_and_complete():
    from adlearn.evaluate import normal_holdout

    kept, held = normal_holdout(list(range(50)), 0.2)
    assert len(held.indices) == 10 and set(kept.indices).isdisjoint(held.indices)
    assert sorted([*kept.indices, *held.indices]) == list(range(50))
    assert held.indices[0] == 0 and held.indices[-1] == 49
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        normal_holdout(list(range(5)), 1.0)


@pytest.mark.slow
def test_evaluate_reports_metrics_at_a_threshold_set_on_held_out_normal_images(small_synthetic_root, tmp_path, capsys):
    """`adlearn evaluate --false-alarm-rate`: fits on 80 % of the training images, and its test figures at the
    threshold equal those recomputed from the saved model's scores."""
    import torch

    import adlearn
    from adlearn.cli import main
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset
    from adlearn.evaluate import collect_predictions, normal_holdout

    category = SYNTHETIC_CATEGORIES[0]
    out, saved = tmp_path / "r.json", tmp_path / "m.pt"
    args = ["evaluate", "padim", "--root", str(small_synthetic_root), "--category", category, "--backbone"]
    args += ["efficientnet_lite0", "--image-size", "64", "--false-alarm-rate", "0.1", "--json", str(out)]
    assert main([*args, "--save", str(saved), "--device", "cpu"]) == 0
    assert "F1-max, its threshold chosen on the test labels" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["n_train"] + results["n_threshold_images"] == 12 and results["n_threshold_images"] == 2
    model = adlearn.load(saved)
    train = MVTecDataset(small_synthetic_root, category, "train", transform=model.transform)
    held = collect_predictions(model, normal_holdout(train, 0.2)[1])["pred_scores"]
    assert results["threshold"] == threshold_for_false_alarm_rate(held, 0.1)
    test = collect_predictions(model, MVTecDataset(small_synthetic_root, category, "test", transform=model.transform))
    expected = metrics_at_threshold(test["labels"], test["pred_scores"], results["threshold"])
    assert results["image_recall_at_threshold"] == pytest.approx(expected["recall"])
    assert results["image_false_alarm_rate_at_threshold"] == pytest.approx(expected["false_alarm_rate"])
    assert torch.is_tensor(model.predict(torch.zeros(1, 3, 64, 64)).pred_score)
