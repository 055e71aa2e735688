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
    if getattr(model, "input_kind", "image") == "video":
        if threshold is not None:
            raise ValueError("a threshold is not supported for video models yet; evaluate them without one")
        return evaluate_video(model, test_dataset, batch_size, return_predictions)
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


def collect_video_predictions(model, clips, batch_size: int | None = None) -> dict:
    """Run a video model over a clip dataset (``adlearn.data.ClipDataset``); one row per frame.

    A frame's score is the score of the clip that ends on it; a frame that ends no clip (the first
    ``clip_length - 1`` frames of a video) takes the score of the first clip that holds it. Keys:
    ``pred_scores``, ``labels``, ``videos``, ``frame_indices``, ``kinds`` (per frame, ``""`` when the
    videos name none), ``masks`` / ``anomaly_maps`` (F, H, W) and ``has_masks`` (F,), ``boxes`` and
    ``box_scores`` (per frame), ``predict_seconds``. A model with a ``smooth_frame_scores`` step (AI-VAD's
    smoothing over time) gets each whole video's frame scores through it: ``pred_scores`` are the smoothed
    ones, ``clip_scores`` the frame scores before it.
    """
    if len(clips) == 0:
        raise ValueError("the test clip dataset is empty — nothing to evaluate")
    videos = {video.name: video for video in getattr(clips, "videos", [])}
    rows: dict[tuple[str, int], dict] = {}
    model_seconds = 0.0
    for batch in DataLoader(clips, batch_size=batch_size or model.batch_size, shuffle=False):
        _synchronize(model.device)
        start = time.perf_counter()
        parts = model.predict_regions(batch["frames"], list(batch["video"]))
        model_seconds += time.perf_counter() - start
        for i, part in enumerate(parts):
            video, indices = batch["video"][i], batch["frame_indices"][i].tolist()
            row = {
                "score": float(part["frame_score"]),
                "boxes": part["boxes"].numpy(),
                "box_scores": part["region_scores"].numpy(),
                "size": tuple(batch["frames"].shape[-2:]),
            }
            for position, frame in enumerate(indices):  # the clip's own last frame, and earlier frames not yet seen
                if position == len(indices) - 1 or (video, frame) not in rows:
                    label, mask = int(batch["frame_labels"][i, position]), batch["masks"][i, position].numpy()
                    rows[(video, frame)] = {
                        **row,
                        "label": label,
                        "mask": mask,
                        "has_masks": bool(batch["has_masks"][i]),
                    }
    order = {video: n for n, video in enumerate(dict.fromkeys(key[0] for key in rows))}  # videos in dataset order
    keys = sorted(rows, key=lambda key: (order[key[0]], key[1]))
    frames = [rows[key] for key in keys]
    painted = np.stack([_paint(f["boxes"], f["box_scores"], f["mask"].shape) for f in frames])
    clip_scores = np.array([f["score"] for f in frames])
    video_names, frame_indices = [key[0] for key in keys], np.array([key[1] for key in keys])
    smooth = getattr(model, "smooth_frame_scores", None)
    scores = clip_scores if smooth is None else np.asarray(smooth(clip_scores, video_names, frame_indices))
    return {
        "pred_scores": scores,
        "clip_scores": clip_scores,
        "labels": np.array([f["label"] for f in frames], dtype=int),
        "videos": video_names,
        "frame_indices": frame_indices,
        "kinds": [videos[v].kinds[i] if v in videos else "" for v, i in keys],
        "masks": np.stack([f["mask"] for f in frames]),
        "has_masks": np.array([f["has_masks"] for f in frames]),
        "anomaly_maps": painted,
        "boxes": [f["boxes"] for f in frames],
        "box_scores": [f["box_scores"] for f in frames],
        "predict_seconds": model_seconds,
    }


def _paint(boxes: np.ndarray, scores: np.ndarray, size) -> np.ndarray:
    """A frame's map: every box painted with its score (the largest where boxes overlap), 0 elsewhere."""
    painted = np.zeros(size, dtype=np.float32)
    for (x1, y1, x2, y2), score in zip(np.round(boxes).astype(int), scores):
        region = painted[y1:y2, x1:x2]
        np.maximum(region, score, out=region)
    return painted


def evaluate_video(model, clips, batch_size: int | None = None, return_predictions: bool = False) -> dict:
    """Frame-level metrics of a video model on a clip dataset (`collect_video_predictions`).

    ``image_auroc`` is the frame AUROC with all frames pooled (``frame_auroc_micro``), so the tables of
    image models read it too; ``frame_auroc_macro`` averages it per video, ``frame_auroc_<kind>`` per
    anomaly kind; where videos have masks, ``pixel_auroc`` (the painted boxes against the masks) and
    ``region_auroc`` (`adlearn.metrics.region_auroc`) over those videos' frames.
    """
    from adlearn.metrics import frame_auroc_macro, frame_auroc_per_kind, pixel_auroc, region_auroc

    predictions = collect_video_predictions(model, clips, batch_size)
    labels, scores = predictions["labels"], predictions["pred_scores"]
    metrics = compute_all(labels, scores)
    metrics["frame_auroc_micro"] = metrics["image_auroc"]
    metrics["frame_auroc_macro"] = frame_auroc_macro(labels, scores, predictions["videos"])
    for kind, value in frame_auroc_per_kind(labels, scores, predictions["kinds"]).items():
        if kind:
            metrics[f"frame_auroc_{kind}"] = value
    with_masks = predictions["has_masks"]
    if with_masks.any() and predictions["masks"][with_masks].any():
        chosen = np.flatnonzero(with_masks)
        metrics["pixel_auroc"] = pixel_auroc(predictions["masks"][chosen], predictions["anomaly_maps"][chosen])
        metrics["region_auroc"] = region_auroc(
            [predictions["masks"][i] for i in chosen],
            [predictions["boxes"][i] for i in chosen],
            [predictions["box_scores"][i] for i in chosen],
        )
    n_frames = len(labels)
    results = {
        "model": model.name,
        "task": getattr(model, "task", "segmentation"),
        "input_kind": "video",
        **metrics,
        "predict_seconds": predictions["predict_seconds"],
        "images_per_second": len(clips) / max(predictions["predict_seconds"], 1e-9),
        "n_test": n_frames,
        "n_test_videos": len(set(predictions["videos"])),
        "peak_memory_mb": _peak_memory_mb(model.device),
    }
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
