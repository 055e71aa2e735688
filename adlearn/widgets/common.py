"""Small helpers the widgets share: array conversion, 2-D projection, anomaly scores -> AUROC."""

from __future__ import annotations

import numpy as np
import torch

from adlearn.utils import one_cpu_thread

__all__ = ["project_features", "separation_auroc", "single_thread", "histogram_bins"]


# Tiny tensors (a 2-D toy flow: 256 × 2 values per step): threads would only wait on each other.
single_thread = one_cpu_thread


def _as_tensor(x, name: str = "features") -> torch.Tensor:
    """A 2-D floating tensor from a tensor / array / list ``(N, D)`` (float64 stays float64)."""
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if tensor.dim() == 1:  # a plain list of numbers is one feature per sample
        tensor = tensor[:, None]
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (N samples, D features), got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.detach().cpu()


def _as_numpy(x) -> np.ndarray:
    """NumPy copy of a tensor or array (for plotting and for results dicts)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def project_features(train, *others, n_components: int = 2) -> list[np.ndarray]:
    """Fit adlearn's `PCA` on ``train (N, D)`` and project ``train`` and every array in ``others``.

    Returns ``[train (N, k), other_1 (M_1, k), ...]`` as NumPy arrays. Arrays that already have
    ``k`` or fewer columns are returned unchanged (a 2-D toy needs no projection).
    """
    from adlearn.components import PCA

    arrays = [_as_tensor(train, "train")] + [_as_tensor(o, "features") for o in others]
    if arrays[0].shape[1] <= n_components:
        return [_as_numpy(a) for a in arrays]
    pca = PCA(n_components=n_components).fit(arrays[0])
    return [_as_numpy(pca.transform(a)) for a in arrays]


def separation_auroc(normal_scores, anomalous_scores) -> float:
    """AUROC of "anomalous scores higher than normal ones" (NaN when one group is empty)."""
    from adlearn.metrics import image_auroc

    normal, anomalous = _as_numpy(normal_scores).ravel(), _as_numpy(anomalous_scores).ravel()
    if normal.size == 0 or anomalous.size == 0:
        return float("nan")
    labels = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
    return float(image_auroc(labels, np.r_[normal, anomalous]))


def histogram_bins(*groups, bins: int = 20) -> tuple[np.ndarray, bool]:
    """Shared bin edges for overlaid histograms -> ``(edges, log_scale)``.

    Positive scores spread over more than two decades (reconstruction errors of anomalies are
    often 100× those of normal samples) get log-spaced bins, so the normal group is not squeezed
    into the first bin; draw those with ``ax.set_xscale("log")``.
    """
    values = np.concatenate([_as_numpy(g).ravel() for g in groups])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > 100 * values.min():
        return np.geomspace(values.min(), values.max(), bins + 1), True
    return np.histogram_bin_edges(values, bins=bins), False
