"""PaDiM map widget: how many random channels d, and how much blur σ, the anomaly map needs.

PaDiM (Defard et al., 2020, arXiv:2011.08785; reference ``anomalib.models.image.padim``) keeps a
fixed random subset of d channels of the backbone's embedding (Sec. 3.1), fits one Gaussian per
position (Sec. 3.2, Eq. 1: Σ + 0.01·I), and maps the Mahalanobis distance of every test patch
(Sec. 3.3, Eq. 2), upsampled and blurred with a Gaussian of σ = 4. The two knobs of this widget:

* **d** (``n_features``): more channels describe a patch better, but with N training images only
  N − 1 directions of each d × d covariance are learned from data — the rest is the 0.01 floor —
  and the cost grows with d²;
* **σ** (``blur_sigma``): a wider blur removes isolated noisy patches and also flattens small defects.

The backbone is the slow part, so `PadimFeatures` runs it once — every channel, in the order
PaDiM's seed draws them (`random_channel_index`: the choice of d channels is the first d) — and a
change of d refits only the Gaussians, a change of σ only blurs again. The map is built with the
model's own steps (`MultiVariateGaussian`, `mahalanobis_map`), so the widget's map for (d, σ) is
``Padim(n_features=d, blur_sigma=σ)``'s ``predict`` map.

    features = PadimFeatures(model, train, test)                   # the backbone, once
    result = padim_maps_explore(features, n_features=20, blur_sigma=4.0)   # pure numbers
    padim_maps_widget(features)                                     # live, in Jupyter
    padim_maps_static_figure(features, settings=((10, 4), (100, 4), (100, 1), (100, 8)))  # the book
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from adlearn.components import GaussianBlur2d, MultiVariateGaussian
from adlearn.models.padim import Padim, mahalanobis_map, random_channel_index
from adlearn.plotting import denormalize, outline_mask
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PadimFeatures", "padim_maps_explore", "padim_maps_widget", "padim_maps_static_figure"]

DEFAULT_SETTINGS = ((10, 4.0), (100, 4.0), (100, 1.0), (100, 8.0))  # (d, σ) of the book's panels
CACHED_D = 4  # unblurred maps kept for this many d: a slider revisits its neighbours, a figure its settings


class PadimFeatures:
    """PaDiM's embeddings of a training and a test set, computed once, every channel in PaDiM's order.

    Args:
        model: a `Padim` (fitted or not): its backbone, layers, image size and ``seed`` are used.
        train: the normal training images (a Dataset of items with ``"image"``, a DataLoader or a
            tensor ``(N, 3, H, W)``), as for ``model.fit``.
        test: a Dataset of test items (``"image"``, ``"mask"``, ``"label"``).
        max_features: keep only the first this many channels of the order (default: all of them).

    Attributes:
        train_embedding ``(N, D, h, w)``, test_embedding ``(M, D, h, w)``, channel_order ``(D,)``
        (backbone channel indices: ``channel_order[:d]`` is ``Padim(n_features=d)``'s choice),
        images ``(M, 3, H, W)``, masks ``(M, H, W)``, labels ``(M,)``, image_size ``(H, W)``.
    """

    def __init__(self, model: Padim, train, test, max_features: int | None = None) -> None:
        if not isinstance(model, Padim):
            raise TypeError(f"PadimFeatures needs a Padim model, got {type(model).__name__}")
        total = sum(model.feature_extractor.out_dims)
        max_features = total if max_features is None else int(max_features)
        if not 1 <= max_features <= total:
            raise ValueError(f"max_features must be in 1..{total} (the backbone's channels), got {max_features}")
        # Step 3's draw for all channels: its first d entries are the choice of Padim(n_features=d).
        self.channel_order = random_channel_index(total, total, model.seed)[:max_features]  # (D,)
        self.total_channels = total
        model.to_device().eval()
        order = self.channel_order.to(model.device)
        with torch.no_grad():
            self.train_embedding = self._embed(model, train, order)  # (N, D, h, w)
            self.test_embedding = self._embed(model, test, order)  # (M, D, h, w)
        items = [test[i] for i in range(len(test))]
        self.images = torch.stack([item["image"] for item in items])  # (M, 3, H, W)
        self.masks = torch.stack([item["mask"] for item in items])  # (M, H, W)
        self.labels = np.array([int(item["label"]) for item in items])  # (M,)
        self.image_size = tuple(self.images.shape[-2:])
        self._raw: dict[int, torch.Tensor] = {}  # d -> unblurred maps (M, H, W); the CACHED_D last used

    @staticmethod
    def _embed(model: Padim, data, order: torch.Tensor) -> torch.Tensor:
        """Steps 1–2 (``model.embed``), channels in PaDiM's order, on the CPU."""
        return torch.cat([model.embed(images).index_select(1, order).cpu() for images in model.batches(data)])

    @property
    def max_features(self) -> int:
        return int(self.channel_order.numel())

    def raw_maps(self, n_features: int) -> torch.Tensor:
        """Steps 4–5 without the blur for the first ``n_features`` channels -> ``(M, H, W)`` (cached)."""
        if not 1 <= n_features <= self.max_features:
            raise ValueError(f"n_features must be in 1..{self.max_features}, got {n_features}")
        if n_features not in self._raw:
            gaussian = MultiVariateGaussian()
            gaussian.fit(self.train_embedding[:, :n_features])  # step 4: one Gaussian per position
            with torch.no_grad():  # step 5 with no blur: nn.Identity in the blur's place
                maps = mahalanobis_map(gaussian, self.test_embedding[:, :n_features], self.image_size, nn.Identity())
            while len(self._raw) >= CACHED_D:  # the least recently used goes: memory stays bounded
                self._raw.pop(next(iter(self._raw)))
            self._raw[n_features] = maps
        self._raw[n_features] = self._raw.pop(n_features)  # the most recently used goes last
        return self._raw[n_features]

    def maps(self, n_features: int, blur_sigma: float) -> torch.Tensor:
        """The anomaly maps of ``Padim(n_features=d, blur_sigma=σ)`` for the test images -> ``(M, H, W)``."""
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0 (PaDiM always blurs), got {blur_sigma}")
        blur = GaussianBlur2d(sigma=float(blur_sigma), channels=1)
        with torch.no_grad():
            return blur(self.raw_maps(n_features).unsqueeze(1)).squeeze(1)  # (M, H, W)


def padim_maps_explore(
    features: PadimFeatures, n_features: int = 100, blur_sigma: float = 4.0, image_index: int | None = None
) -> dict:
    """PaDiM's maps with ``n_features`` random channels and blur ``blur_sigma``, and their metrics.

    Args:
        features: the precomputed `PadimFeatures`.
        n_features: d, the number of channels kept (1 … ``features.max_features``).
        blur_sigma: σ of the map's Gaussian blur (> 0).
        image_index: the test image shown (default: the first defective one).

    Returns a dict: ``n_features``, ``blur_sigma``, ``image_index``, ``maps (M, H, W)`` (NumPy),
    ``raw_map`` / ``map`` of the shown image ``(H, W)`` (before / after the blur), ``mask (H, W)``,
    ``label``, ``pixel_auroc``, ``image_auroc`` (image score = the map's maximum) and ``directions``:
    the learnable directions per Gaussian, min(d, N − 1).
    """
    from adlearn.metrics import image_auroc, pixel_auroc

    if image_index is None:
        defective = np.flatnonzero(features.labels == 1)
        image_index = int(defective[0]) if defective.size else 0
    if not 0 <= image_index < len(features.labels):
        raise ValueError(f"image_index must be in 0..{len(features.labels) - 1}, got {image_index}")
    maps = features.maps(n_features, blur_sigma)  # (M, H, W)
    both = len(set(features.labels.tolist())) == 2
    return {
        "n_features": int(n_features),
        "blur_sigma": float(blur_sigma),
        "image_index": int(image_index),
        "maps": maps.numpy(),
        "raw_map": features.raw_maps(n_features)[image_index].numpy(),
        "map": maps[image_index].numpy(),
        "mask": features.masks[image_index].numpy(),
        "label": int(features.labels[image_index]),
        "pixel_auroc": float(pixel_auroc(features.masks, maps)) if features.masks.any() else float("nan"),
        "image_auroc": float(image_auroc(features.labels, maps.flatten(1).amax(dim=1))) if both else float("nan"),
        "directions": min(int(n_features), features.train_embedding.shape[0] - 1),
    }


# ---------------------------------------------------------------------------------- panels
def _draw_image(ax: Axes, features: PadimFeatures, result: dict) -> None:
    ax.imshow(denormalize(features.images[result["image_index"]][None])[0])
    outline_mask(ax, result["mask"], "red")
    kind = "defective" if result["label"] else "normal"
    ax.set_title(f"test image {result['image_index']} ({kind}), truth in red", fontsize="medium")
    ax.axis("off")


def _draw_map(ax: Axes, result: dict, raw: bool = False, title: str | None = None) -> None:
    ax.imshow(result["raw_map" if raw else "map"], cmap="jet")
    outline_mask(ax, result["mask"], "white")
    default = (
        f"Mahalanobis, d = {result['n_features']}, no blur"
        if raw
        else f"d = {result['n_features']}, σ = {result['blur_sigma']:g}: pixel AUROC {result['pixel_auroc']:.3f}"
    )
    ax.set_title(title or default, fontsize="medium")
    ax.axis("off")


# ---------------------------------------------------------------------------------- views
def padim_maps_widget(
    features: PadimFeatures, n_features: int = 100, blur_sigma: float = 4.0, image_index: int | None = None
) -> WidgetView:
    """Live view: move d and σ (and the shown test image) and watch the map and its pixel AUROC.

    Controls: ``n_features`` (d, 1 … ``features.max_features``), ``blur_sigma`` (σ, 0.5 … 12),
    ``image_index`` (a test image).
    """
    import ipywidgets as widgets

    first = padim_maps_explore(features, min(n_features, features.max_features), blur_sigma, image_index)
    controls = {
        "n_features": widgets.IntSlider(
            value=first["n_features"], min=1, max=features.max_features, description="d", continuous_update=False
        ),
        "blur_sigma": widgets.FloatSlider(
            value=blur_sigma, min=0.5, max=12.0, step=0.5, description="σ", continuous_update=False
        ),
        "image_index": widgets.IntSlider(
            value=first["image_index"],
            min=0,
            max=len(features.labels) - 1,
            description="test image",
            continuous_update=False,
        ),
    }

    def compute(n_features, blur_sigma, image_index):
        return padim_maps_explore(features, n_features, blur_sigma, image_index)

    def draw(result):
        fig = _new_figure(12, 3.9)
        image, raw, blurred = fig.subplots(1, 3)
        _draw_image(image, features, result)
        _draw_map(raw, result, raw=True)
        _draw_map(blurred, result)
        fig.suptitle(
            f"{result['directions']} of {result['n_features']} directions per Gaussian learned from "
            f"{features.train_embedding.shape[0]} images; image AUROC {result['image_auroc']:.3f}",
            fontsize="medium",
        )
        return fig

    return WidgetView(controls, compute, draw, title="PaDiM: random channels d and blur σ")


def padim_maps_static_figure(
    features: PadimFeatures, settings=DEFAULT_SETTINGS, image_index: int | None = None
) -> Figure:
    """Small multiples for the book: the test image, then its map for each ``(d, σ)`` setting,
    titled with the pixel AUROC of the whole test set."""
    if not settings:
        raise ValueError("settings needs at least one (n_features, blur_sigma) pair")
    fig = _new_figure(3.1 * (len(settings) + 1), 3.7)
    axes = np.atleast_1d(fig.subplots(1, len(settings) + 1))
    result = None
    for ax, (n_features, blur_sigma) in zip(axes[1:], settings):
        result = padim_maps_explore(features, n_features, blur_sigma, image_index)
        _draw_map(ax, result, title=f"d = {n_features}, σ = {blur_sigma:g}\npixel AUROC {result['pixel_auroc']:.3f}")
    _draw_image(axes[0], features, result)
    axes[0].set_title(f"test image {result['image_index']}\n(truth in red)", fontsize="medium")
    return fig
