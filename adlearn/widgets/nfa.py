"""NFA widget: the a-contrario threshold ε of U-Flow's mask, next to the best threshold on the map.

U-Flow (Tailanian et al., 2023, arXiv:2211.12353, Sec. 3.4; reference
``anomalib.models.image.uflow.anomaly_map``) flags a region when its Number of False Alarms is below
ε: under "nothing is wrong" (latents exactly N(0, I)), at most ε such regions appear per image on
average. ε is a promise about false alarms, chosen without any label — in log10 units, the mask is
{log10 NFA < log10 ε}. The widget moves log10 ε and shows the model's anomaly map (1 − the latent
likelihood), the log-NFA map, the mask at ε with its pixel F1 against the ground truth, and beside
it the mask of the F1-max threshold on the anomaly map — the best any threshold could do, found
*with* the test labels.

The latents and the map are computed once (`UflowOutputs`: ``model.encode`` and the model's
`uflow_anomaly_map` and blur, the steps of its ``predict``); a change of ε reruns
`nfa_segmentation` — the function ``predict`` calls — with the model's window and candidate
settings, so the widget's mask at ε is ``Uflow(nfa_epsilon=ε)``'s ``pred_mask``.

    outputs = UflowOutputs(model, test)                      # the backbone and the flow, once
    result = nfa_explore(outputs, log10_epsilon=0.0)          # pure numbers (ε = 1)
    nfa_widget(outputs)                                       # live, in Jupyter
    nfa_static_figure(outputs, log10_epsilons=(0, 2, 3))      # for the book
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from adlearn.components.nfa import nfa_segmentation
from adlearn.models.base import NotFittedError
from adlearn.models.uflow import Uflow, uflow_anomaly_map
from adlearn.plotting import denormalize, outline_mask
from adlearn.widgets.view import WidgetView, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["UflowOutputs", "nfa_explore", "nfa_widget", "nfa_static_figure"]


class UflowOutputs:
    """A fitted U-Flow's latents and anomaly maps of a test set, computed once.

    Args:
        model: a fitted `Uflow`; its NFA settings (``model.nfa``: window, candidate level) are used.
        test: a Dataset of test items (``"image"``, ``"mask"``, ``"label"``) with at least one defect pixel.

    Attributes:
        latents ``[(M, C_s, h_s, w_s)]`` finest first, anomaly_maps ``(M, H, W)``, images, masks
        ``(M, H, W)``, labels ``(M,)``, image_size, nfa (the model's settings), n_tests (windows tested
        per image), f1max and f1max_threshold (the best threshold on the anomaly maps).
    """

    def __init__(self, model: Uflow, test) -> None:
        from adlearn.metrics import f1_max

        if not isinstance(model, Uflow):
            raise TypeError(f"UflowOutputs needs a Uflow model, got {type(model).__name__}")
        items = [test[i] for i in range(len(test))]
        self.images = torch.stack([item["image"] for item in items])  # (M, 3, H, W)
        self.masks = torch.stack([item["mask"] for item in items])  # (M, H, W)
        self.labels = np.array([int(item["label"]) for item in items])  # (M,)
        if not self.masks.any():
            raise ValueError("the test set has no defect pixel: the masks' F1 needs at least one")
        self.image_size = tuple(self.images.shape[-2:])
        if not model.is_fitted:
            raise NotFittedError("U-Flow is not fitted yet: call model.fit(train_data) before UflowOutputs")
        latents, maps = [], []
        model.eval()
        with torch.no_grad():
            for images in model.batches(self.images):
                batch_latents, _ = model.encode(images)  # steps 1–2: [(B, C_s, h_s, w_s)]
                anomaly_map = uflow_anomaly_map(batch_latents, images.shape[-2:])  # step 4, (B, H, W)
                if model.blur is not None:  # the map predict returns: smoothed as in the model
                    anomaly_map = model.blur(anomaly_map[:, None])[:, 0]
                latents.append([z.cpu() for z in batch_latents])
                maps.append(anomaly_map.cpu())
        self.latents = [torch.cat(scale) for scale in zip(*latents)]  # [(M, C_s, h_s, w_s)]
        self.anomaly_maps = torch.cat(maps)  # (M, H, W)
        self.nfa = {key: value for key, value in model.nfa.items() if key != "epsilon"}
        self.model_epsilon = float(model.nfa["epsilon"])
        self.n_tests = sum(z.shape[-2] * z.shape[-1] for z in self.latents)
        self.f1max, self.f1max_threshold = f1_max(self.masks, self.anomaly_maps)

    def segment(self, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(log10 NFA (M, H, W), mask (M, H, W) bool) with the model's settings and this ε."""
        return nfa_segmentation(self.latents, self.image_size, epsilon=epsilon, **self.nfa)


def _image_f1(mask: np.ndarray, truth: np.ndarray) -> float:
    """Pixel F1 of one image's mask (NaN for a normal image: it has no defect pixel to find)."""
    from adlearn.metrics import mask_f1

    return mask_f1(truth[None], mask[None]) if truth.any() else float("nan")


def nfa_explore(outputs: UflowOutputs, log10_epsilon: float = 0.0, image_index: int | None = None) -> dict:
    """The NFA mask at ε = 10^``log10_epsilon`` and the F1-max threshold's mask.

    Args:
        outputs: the precomputed `UflowOutputs`.
        log10_epsilon: log10 ε (0: ε = 1, "at most one false region per image on average").
        image_index: the test image shown (default: the first defective one).

    Returns a dict: ``epsilon``, ``log10_epsilon``, ``image_index``, ``log_nfa (M, H, W)``,
    ``mask (M, H, W)`` bool, ``f1`` (pixel F1 of the mask over the test set), ``flagged_pixels``,
    ``f1max`` / ``f1max_threshold`` / ``f1max_mask (M, H, W)`` (the best threshold on the anomaly
    map), and for the shown image ``image_f1`` / ``image_f1max`` (NaN for a normal image).
    """
    from adlearn.metrics import mask_f1

    epsilon = 10.0 ** float(log10_epsilon)
    if image_index is None:
        defective = np.flatnonzero(outputs.labels == 1)
        image_index = int(defective[0]) if defective.size else 0
    if not 0 <= image_index < len(outputs.labels):
        raise ValueError(f"image_index must be in 0..{len(outputs.labels) - 1}, got {image_index}")
    log_nfa, mask = outputs.segment(epsilon)
    f1max_mask = (outputs.anomaly_maps >= outputs.f1max_threshold).numpy()  # f1_max flags score >= threshold
    truth, mask = outputs.masks.numpy(), mask.numpy()
    return {
        "epsilon": epsilon,
        "log10_epsilon": float(log10_epsilon),
        "image_index": int(image_index),
        "log_nfa": log_nfa.numpy(),
        "mask": mask,
        "f1": float(mask_f1(truth, mask)),
        "flagged_pixels": int(mask.sum()),
        "f1max": float(outputs.f1max),
        "f1max_threshold": float(outputs.f1max_threshold),
        "f1max_mask": f1max_mask,
        "image_f1": _image_f1(mask[image_index], truth[image_index]),
        "image_f1max": _image_f1(f1max_mask[image_index], truth[image_index]),
    }


# ---------------------------------------------------------------------------------- panels
def _epsilon_text(log10_epsilon: float) -> str:
    """ε for a title, rounded to three significant digits: 1, 0.01, 316, 1000, 1260."""
    return f"{float(f'{10.0**log10_epsilon:.3g}'):g}"


def _outline(ax: Axes, truth: np.ndarray, color: str) -> None:
    outline_mask(ax, truth, color)
    ax.axis("off")


def _draw_inputs(axes, outputs: UflowOutputs, result: dict) -> None:
    """Three panels: the image with its truth, the anomaly map, −log10 NFA with the ε level."""
    image, anomaly_map, nfa_map = axes
    index = result["image_index"]
    truth = outputs.masks[index].numpy()
    image.imshow(denormalize(outputs.images[index][None])[0])
    _outline(image, truth, "red")
    image.set_title(f"test image {index} (truth in red)", fontsize="medium")
    anomaly_map.imshow(outputs.anomaly_maps[index].numpy(), cmap="jet")
    _outline(anomaly_map, truth, "white")
    anomaly_map.set_title("anomaly map: 1 − likelihood", fontsize="medium")
    surprise = -result["log_nfa"][index]  # > 0: fewer than one such region per image by chance
    nfa_map.imshow(surprise, cmap="magma", vmin=min(-1.0, float(surprise.min())))
    if surprise.min() < -result["log10_epsilon"] < surprise.max():
        nfa_map.contour(surprise, levels=[-result["log10_epsilon"]], colors="cyan", linewidths=1)
    _outline(nfa_map, truth, "white")
    nfa_map.set_title("−log10 NFA (cyan: −log10 ε)", fontsize="medium")


def _draw_nfa_mask(ax: Axes, outputs: UflowOutputs, result: dict) -> None:
    """The mask NFA < ε of the shown image, titled with its F1 over the test set and on this image."""
    index = result["image_index"]
    ax.imshow(result["mask"][index], cmap="gray", vmin=0, vmax=1)
    _outline(ax, outputs.masks[index].numpy(), "red")
    ax.set_title(
        f"NFA < ε = {_epsilon_text(result['log10_epsilon'])}: F1 {result['f1']:.3f}\n"
        f"(this image {result['image_f1']:.3f})",
        fontsize="medium",
    )


def _draw_best_mask(ax: Axes, outputs: UflowOutputs, result: dict) -> None:
    """The mask of the F1-max threshold on the anomaly map (chosen with the test labels)."""
    index = result["image_index"]
    ax.imshow(result["f1max_mask"][index], cmap="gray", vmin=0, vmax=1)
    _outline(ax, outputs.masks[index].numpy(), "red")
    ax.set_title(
        f"best threshold (uses the labels): F1 {result['f1max']:.3f}\n(this image {result['image_f1max']:.3f})",
        fontsize="medium",
    )


# ---------------------------------------------------------------------------------- views
def nfa_widget(outputs: UflowOutputs, log10_epsilon: float = 0.0, image_index: int | None = None) -> WidgetView:
    """Live view: move log10 ε (and the shown test image) and compare the NFA mask with the best threshold.

    Controls: ``log10_epsilon`` (−2 … log10 of the windows tested per image, rounded up to a half:
    above that every window is flagged) and ``image_index``.
    """
    import ipywidgets as widgets

    first = nfa_explore(outputs, log10_epsilon, image_index)
    controls = {
        "log10_epsilon": widgets.FloatSlider(
            value=log10_epsilon,
            min=-2.0,
            max=math.ceil(2 * math.log10(outputs.n_tests) + 1) / 2,
            step=0.1,
            description="log10 ε",
            continuous_update=False,
        ),
        "image_index": widgets.IntSlider(
            value=first["image_index"],
            min=0,
            max=len(outputs.labels) - 1,
            description="test image",
            continuous_update=False,
        ),
    }

    def draw(result):
        fig = _new_figure(15, 3.6)
        axes = fig.subplots(1, 5)
        _draw_inputs(axes[:3], outputs, result)
        _draw_nfa_mask(axes[3], outputs, result)
        _draw_best_mask(axes[4], outputs, result)
        return fig

    return WidgetView(
        controls,
        lambda log10_epsilon, image_index: nfa_explore(outputs, log10_epsilon, image_index),
        draw,
        title="U-Flow's a-contrario mask: the NFA threshold ε",
    )


def nfa_static_figure(outputs: UflowOutputs, log10_epsilons=(0.0, 2.0, 3.0), image_index: int | None = None) -> Figure:
    """Small multiples for the book: the image, its anomaly map and −log10 NFA on top; below, the
    NFA mask for each ε (titled with its pixel F1 over the test set), then the F1-max threshold's mask."""
    if not log10_epsilons:
        raise ValueError("log10_epsilons needs at least one value")
    results = [nfa_explore(outputs, value, image_index) for value in log10_epsilons]
    columns = max(3, len(results) + 1)
    fig = _new_figure(3.1 * columns, 6.8)
    axes = fig.subplots(2, columns, squeeze=False)
    _draw_inputs(axes[0, :3], outputs, results[0])
    for ax, result in zip(axes[1], results):
        _draw_nfa_mask(ax, outputs, result)
    _draw_best_mask(axes[1, len(results)], outputs, results[0])
    for ax in [*axes[0, 3:], *axes[1, len(results) + 1 :]]:
        ax.set_visible(False)
    return fig
