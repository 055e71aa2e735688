"""Evaluate a fitted model on a labelled test set: scores, maps, metrics, speed and memory.

    results = adlearn.evaluate(model, test_dataset)
    results["image_auroc"], results["pixel_auroc"], results["images_per_second"]

``fit_and_evaluate`` adds the fit time: it is what ``adlearn evaluate`` on the command line runs.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from adlearn.metrics import compute_all, mask_f1, metrics_at_threshold, threshold_for_false_alarm_rate


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def collect_predictions(model, dataset, batch_size: int | None = None) -> dict:
    """Run ``model.predict`` over ``dataset``; return numpy arrays and the time the model took.

    Keys: ``pred_scores (N,)``, ``labels (N,)``, ``anomaly_maps (N,H,W)`` or None, ``masks (N,H,W)``,
    ``defect_types``, ``image_paths``, ``predict_seconds`` (model time only, data loading excluded).
    """
    if len(dataset) == 0:
        raise ValueError("the test dataset is empty — nothing to evaluate")
    loader = DataLoader(dataset, batch_size=batch_size or model.batch_size, shuffle=False)
    scores, labels, maps, masks, defect_types, paths, pred_masks = [], [], [], [], [], [], []
    model_seconds = 0.0
    for batch in loader:
        _synchronize(model.device)
        start = time.perf_counter()
        prediction = model.predict(batch["image"]).cpu()  # .cpu() waits for the device
        model_seconds += time.perf_counter() - start
        scores.append(prediction.pred_score.float().numpy())
        if prediction.anomaly_map is not None:
            maps.append(prediction.anomaly_map.float().numpy())
        if prediction.pred_mask is not None:
            pred_masks.append(prediction.pred_mask.numpy().astype(bool))
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy())
        defect_types += list(batch["defect_type"])
        paths += list(batch["image_path"])
    return {
        "pred_scores": np.concatenate(scores),
        "labels": np.concatenate(labels).astype(int),
        "anomaly_maps": np.concatenate(maps) if maps else None,
        "pred_masks": np.concatenate(pred_masks) if pred_masks else None,
        "masks": np.concatenate(masks),
        "defect_types": defect_types,
        "image_paths": paths,
        "predict_seconds": model_seconds,
    }


def evaluate(
    model,
    test_dataset,
    batch_size: int | None = None,
    return_predictions: bool = False,
    threshold: float | None = None,
) -> dict:
    """Metrics of a fitted model on ``test_dataset`` (items as in ``adlearn.data``).

    ``threshold``: a threshold chosen *without* the test labels (e.g. `threshold_for_false_alarm_rate` on
    normal held-out images); the results then add ``image_recall_at_threshold``,
    ``image_false_alarm_rate_at_threshold``, ``image_precision_at_threshold`` and ``image_f1_at_threshold``."""
    predictions = collect_predictions(model, test_dataset, batch_size)
    metrics = compute_all(
        predictions["labels"],
        predictions["pred_scores"],
        masks=predictions["masks"] if predictions["anomaly_maps"] is not None else None,
        maps=predictions["anomaly_maps"],
    )
    if predictions["pred_masks"] is not None:  # the model's own segmentation (no threshold chosen with labels)
        metrics["pixel_f1_mask"] = mask_f1(predictions["masks"], predictions["pred_masks"])
    n_images = len(predictions["labels"])
    results = {
        "model": model.name,
        "task": getattr(model, "task", "segmentation"),
        **metrics,
        "predict_seconds": predictions["predict_seconds"],
        "images_per_second": n_images / max(predictions["predict_seconds"], 1e-9),
        "n_test": n_images,
        "peak_memory_mb": _peak_memory_mb(model.device),
    }
    if threshold is not None:
        decided = metrics_at_threshold(predictions["labels"], predictions["pred_scores"], threshold)
        results.update({"threshold": float(threshold), **{f"image_{k}_at_threshold": v for k, v in decided.items()}})
    if predictions["anomaly_maps"] is None:
        results["note"] = no_map_note(model.name)
    if return_predictions:
        results["predictions"] = predictions
    return results


def no_map_note(model_name: str) -> str:
    """What ``evaluate`` says instead of pixel metrics for a model without anomaly maps."""
    return (
        f"{model_name} is an image-level (classification) model: it scores whole images and makes no "
        "anomaly map, so there are no pixel metrics (pixel AUROC, AUPRO) to report"
    )


def normal_holdout(dataset, fraction: float) -> tuple[Subset, Subset]:
    """Split normal training images into (fit, held out): every ``round(1/fraction)``-th image is held out
    (evenly spaced, deterministic), the rest fit the model."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1); got {fraction}")
    n = len(dataset)
    held = sorted({int(i) for i in np.linspace(0, n - 1, max(1, round(fraction * n)))})
    kept = [i for i in range(n) if i not in set(held)]
    if not kept:
        raise ValueError(f"holding out {fraction:.0%} of {n} training images leaves none to fit on")
    return Subset(dataset, kept), Subset(dataset, held)


def fit_and_evaluate(
    model,
    train_dataset,
    test_dataset,
    return_predictions: bool = False,
    false_alarm_rate: float | None = None,
    threshold_fraction: float = 0.2,
) -> dict:
    """Fit, then evaluate; adds ``fit_seconds`` (wall), ``fit_cpu_seconds`` and ``n_train``.

    ``fit_cpu_seconds`` is the CPU time of this process during the fit (all its threads): on a shared
    machine the wall time grows with the other processes' load, the CPU time much less.

    ``false_alarm_rate``: hold out ``threshold_fraction`` of the (normal) training images, fit on the rest,
    set the threshold that rejects at most that fraction of the held-out images, and report the test
    metrics at it (`evaluate`'s ``threshold``) beside F1-max — what a line without anomalies can do.
    """
    threshold_images = None
    if false_alarm_rate is not None:
        train_dataset, threshold_images = normal_holdout(train_dataset, threshold_fraction)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(train_dataset)
    _synchronize(model.device)
    fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    threshold = None
    if threshold_images is not None:
        normal_scores = collect_predictions(model, threshold_images)["pred_scores"]
        threshold = threshold_for_false_alarm_rate(normal_scores, false_alarm_rate)
    results = evaluate(model, test_dataset, return_predictions=return_predictions, threshold=threshold)
    results.update(fit_seconds=fit_seconds, fit_cpu_seconds=fit_cpu_seconds, n_train=len(train_dataset))
    if threshold_images is not None:
        results.update(false_alarm_rate_target=false_alarm_rate, n_threshold_images=len(threshold_images))
    return results


# ``adlearn.evaluate(model, test)`` is the package's shortcut to `evaluate` above, but importing this
# module (``from adlearn.evaluate import ...``) binds the *module* to the name ``adlearn.evaluate``.
# Making the module itself callable keeps both spellings working, whatever was imported first.
class _CallableModule(sys.modules[__name__].__class__):
    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
