"""Scoring a model on validation data after an epoch: its loss, or the AUROC of its predictions.

Validation never trains: the model is in eval mode, no gradient is kept, and the model's
``validation_step`` (never ``training_step``, which may step optimizers) gives the loss. So the
weights, the batch-norm statistics and every optimizer's state are the same before and after.

Why a local AUROC and not ``adlearn.metrics``: the package is layered (docs/design.md) and
``metrics`` sits *above* ``models``, which uses this package, so importing it here would make a
cycle. AUROC needs only ranks (Mann–Whitney U, ~15 lines, checked against ``adlearn.metrics`` in
the tests); anything fancier is injected as ``val_metric_fn``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def rank_auroc(labels, scores) -> float:
    """AUROC = P(score of a positive > score of a negative), ties counting ½ (Mann–Whitney U).

    Rank all scores together (tied scores share their average rank); the positives' rank sum minus
    its smallest possible value n₊(n₊+1)/2 counts the (positive, negative) pairs ranked correctly.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives; got {n_pos} positive and {n_neg} negative")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of each distinct value's last copy
    average_rank = ends - (counts - 1) / 2.0  # mean of the ranks a tied block occupies
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def total_loss(output) -> torch.Tensor:
    """One scalar from a step's output: the tensor itself, or a dict's ``"loss"`` (else the sum)."""
    if isinstance(output, dict):
        return output["loss"] if "loss" in output else sum(output.values())
    return output


def select(batch: dict, keep: torch.Tensor) -> dict:
    """The items of a dict batch where ``keep`` (a (B,) bool tensor) is True."""
    indices = keep.nonzero().flatten().tolist()
    return {
        key: value[keep] if isinstance(value, torch.Tensor) else [value[i] for i in indices]
        for key, value in batch.items()
    }


@torch.no_grad()
def validation_loss(model, batches, autocast: Callable, step: Callable | None = None) -> float:
    """Mean ``model.validation_step`` loss (or ``step``'s, e.g. a phase's) over the *normal* images
    (label 0) of ``batches``."""
    step = step or model.validation_step
    model.eval()
    losses = []
    for batch in batches:
        if "label" in batch:  # the loss describes normal data only
            batch = select(batch, torch.as_tensor(batch["label"]) == 0)
            if len(batch["image"]) == 0:
                continue
        with autocast():
            losses.append(float(total_loss(step(batch))))
    if not losses:
        raise ValueError("validation loss needs normal images (label 0) in val_data")
    return float(np.mean(losses))


@torch.no_grad()
def validation_auroc(model, batches, metric: str, autocast: Callable) -> tuple[str, float | None]:
    """(metric actually used, value) from ``model.predict`` on ``batches``.

    ``metric`` is "image_auroc", "pixel_auroc" or "auto" (pixel AUROC when the images have defect
    masks and the model maps, else image AUROC); "auto" returns ("loss", None) when the data has no
    labels or the labels are all one class, so the caller can fall back to the loss.
    """
    labels, scores, masks, maps = [], [], [], []
    for batch in batches:
        if "label" not in batch and metric == "auto":  # plain images (a tensor): nothing to rank, use the loss
            return "loss", None
        if "label" not in batch:
            raise ValueError(
                f"val_metric={metric!r} needs labelled validation data "
                "(dict items with 'label'); use val_metric='loss' for normal images only"
            )
        with autocast():
            prediction = model.predict(batch["image"])
        labels.append(torch.as_tensor(batch["label"]).cpu())
        scores.append(prediction.pred_score.float().cpu())
        if prediction.anomaly_map is not None and "mask" in batch:
            maps.append(prediction.anomaly_map.float().cpu())
            masks.append(batch["mask"].cpu())
    labels = torch.cat(labels).numpy()
    has_both = 0 < labels.sum() < len(labels)
    if metric == "auto":
        if not has_both:
            return "loss", None
        metric = "pixel_auroc" if maps and torch.cat(masks).any() else "image_auroc"
    if metric == "pixel_auroc":
        if not maps:
            raise ValueError("val_metric='pixel_auroc' needs a model with anomaly maps and data with masks")
        return metric, rank_auroc(torch.cat(masks).numpy() > 0.5, torch.cat(maps).numpy())
    return metric, rank_auroc(labels, torch.cat(scores).numpy())
