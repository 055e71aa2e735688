"""Region proposals: where in an image to look for an object (R-KDE's first stage).

R-KDE scores *regions* of an image rather than pixels or whole images, so it first needs a few hundred
candidate boxes per image. The reference implementation (``anomalib.models.image.rkde.region_extractor``)
takes them from torchvision's Faster R-CNN trained on COCO, a 160 MB download. This module offers that
path (`DetectorProposals`, ``stage="rcnn"`` or ``"rpn"``) and an offline default that needs no weights:

**Selective search** (J. R. R. Uijlings, K. E. A. van de Sande, T. Gevers, A. W. M. Smeulders,
"Selective Search for Object Recognition", IJCV 104, 2013), `selective_search`:

1. Over-segment the image with the graph-based method of P. F. Felzenszwalb and D. P. Huttenlocher
   ("Efficient Graph-Based Image Segmentation", IJCV 59, 2004; ``skimage.segmentation.felzenszwalb``)
   — §3.1 of Uijlings et al.
2. Hierarchical grouping (§3.1, Algorithm 1): repeatedly merge the two most similar *adjacent* regions
   until one region is left; every region ever formed — the initial segments and each merge — is a
   proposal (its bounding box).
3. Similarity (§3.2), each term in [0, 1]::

       s(rᵢ, rⱼ) = s_colour + s_texture + s_size + s_fill
       s_colour  = Σₖ min(cᵢᵏ, cⱼᵏ)      cᵢ: 25-bin histogram per colour channel (75-d), L1-normalised
       s_texture = Σₖ min(tᵢᵏ, tⱼᵏ)      tᵢ: 10-bin histograms of Gaussian derivatives (σ = 1) in 8
                                          orientations per channel (240-d), L1-normalised
       s_size    = 1 − (|rᵢ| + |rⱼ|) / |image|          (merge small regions first)
       s_fill    = 1 − (|BBᵢⱼ| − |rᵢ| − |rⱼ|) / |image|  (merge regions that fill each other's box)

   A merged region's histograms are the size-weighted mean of its parts' (no pixel is revisited).
4. Diversification (§3.3): repeat for several Felzenszwalb ``scales`` (the paper's k) and pool the boxes.
5. Ranking (§3.3): within one hierarchy a region's position i counts from the top (i = 1: the last
   merge, the whole image). The paper sorts by i times a random number; we sort by i, then by scale
   — deterministic — and give each box a score that falls with its rank (all distinct, in (0, 1]),
   so that non-maximum suppression keeps the higher regions of the hierarchy.

Simplifications against the paper, documented: one colour space (RGB; the paper's "fast" mode
combines HSV and Lab), one similarity (all four terms; the paper also varies the combination), the
rectified responses of the 8 directional derivatives each normalised by the image's largest response.

**Post-processing** (the reference's ``post_process_box_predictions``), `post_process_boxes`: drop boxes
with a side shorter than ``min_size`` pixels, class-agnostic non-maximum suppression at
``iou_threshold`` (``torchvision.ops.nms``), keep the ``max_detections`` highest scores.

Boxes are float ``(N, 4)`` tensors in ``(x1, y1, x2, y2)`` pixel coordinates, x to the right and y down,
with ``x2``/``y2`` one past the last pixel (a box of the whole H×W image is ``(0, 0, W, H)``).
"""

from __future__ import annotations

import heapq
import warnings
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "ProposalMethod",
    "ProposalWeightsError",
    "selective_search",
    "hierarchical_grouping",
    "initial_regions",
    "post_process_boxes",
    "proposal_recall",
    "DetectorProposals",
    "SelectiveSearch",
    "warn_no_regions",
]

COLOUR_BINS = 25  # per channel (Uijlings et al. §3.2)
TEXTURE_BINS = 10  # per orientation and channel
TEXTURE_ORIENTATIONS = 8


class ProposalMethod(str, Enum):
    """Where the regions come from: the offline default, or the reference's two detector stages."""

    SELECTIVE_SEARCH = "selective_search"  # offline: Felzenszwalb segments + hierarchical grouping
    RCNN = "rcnn"  # Faster R-CNN's final boxes (COCO weights, a download)
    RPN = "rpn"  # Faster R-CNN's region proposal network (same weights)


class ProposalWeightsError(RuntimeError):
    """The detector's COCO weights are neither cached nor downloadable."""


# --------------------------------------------------------------------------------------------
# Selective search, step 1: the initial regions
# --------------------------------------------------------------------------------------------


def _as_hwc_image(image) -> np.ndarray:
    """(3, H, W) tensor or (H, W, 3) array with values in [0, 1] -> float64 (H, W, 3) array."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"selective search expects one image (3, H, W); got {tuple(image.shape)}")
        array = image.detach().cpu().double().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image, dtype=np.float64)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"selective search expects an (H, W, 3) array; got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("selective search got NaN or infinite pixel values")
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(
            f"selective search expects pixel values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]: "
            "undo the ImageNet normalisation first (x * std + mean)"
        )
    return np.clip(array, 0.0, 1.0)


def initial_regions(image, scale: float, sigma: float = 0.8, min_size: int = 20) -> np.ndarray:
    """Felzenszwalb–Huttenlocher over-segmentation: an (H, W) int array of labels 0..n-1.

    ``scale`` is the paper's k (larger: larger segments), ``sigma`` the Gaussian pre-smoothing (0.8 in both
    papers), ``min_size`` the smallest segment in pixels (smaller ones are merged into a neighbour).
    """
    from skimage.segmentation import felzenszwalb

    segments = felzenszwalb(_as_hwc_image(image), scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
    _, labels = np.unique(segments, return_inverse=True)  # consecutive 0..n-1
    return labels.reshape(segments.shape)


# --------------------------------------------------------------------------------------------
# Selective search, steps 2-3: region descriptors and hierarchical grouping
# --------------------------------------------------------------------------------------------


def _histograms(labels: np.ndarray, values: np.ndarray, n_regions: int, bins: int) -> np.ndarray:
    """Per-region histograms of ``values`` (H, W, K) in [0, 1], ``bins`` bins per channel -> (n, K·bins),
    each row L1-normalised."""
    channels = values.shape[2]
    index = np.minimum((values * bins).astype(np.int64), bins - 1)  # (H, W, K)
    offset = labels[..., None] * (channels * bins) + np.arange(channels) * bins + index  # (H, W, K)
    counts = np.bincount(offset.ravel(), minlength=n_regions * channels * bins).astype(np.float64)
    counts = counts.reshape(n_regions, channels * bins)
    return counts / counts.sum(axis=1, keepdims=True)


def _texture_responses(image: np.ndarray) -> np.ndarray:
    """Rectified Gaussian derivatives (σ = 1) in 8 directions per colour channel: (H, W, 3·8) in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    responses = []
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    for channel in range(image.shape[2]):
        dy = gaussian_filter(image[..., channel], sigma=1.0, order=(1, 0))  # ∂/∂y
        dx = gaussian_filter(image[..., channel], sigma=1.0, order=(0, 1))  # ∂/∂x
        for angle in angles:
            directional = np.maximum(np.cos(angle) * dx + np.sin(angle) * dy, 0.0)  # (H, W)
            responses.append(directional / max(directional.max(), 1e-12))
    return np.stack(responses, axis=2)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs (a, b), a < b, of labels that touch horizontally or vertically: (P, 2)."""
    n = int(labels.max()) + 1
    pairs = []
    for first, second in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        different = first != second
        a, b = first[different], second[different]
        pairs.append(np.minimum(a, b) * n + np.maximum(a, b))
    codes = np.unique(np.concatenate(pairs))
    return np.stack([codes // n, codes % n], axis=1)


def hierarchical_grouping(
    image, labels: np.ndarray, texture_responses: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 of Uijlings et al.: merge the most similar adjacent regions until one is left.

    Returns ``(boxes (M, 4) xyxy, level (M,))`` for every region formed — the n initial segments, then the
    n − 1 merges in order — where ``level`` is the position from the top of the hierarchy (1: the last
    region formed). Regions that never touch another (a disconnected label) stay separate tops.
    ``texture_responses``: the image's `_texture_responses`, when already computed (they do not depend
    on the segmentation).
    """
    from scipy.ndimage import find_objects

    image = _as_hwc_image(image)
    height, width = labels.shape
    image_area = float(height * width)
    n = int(labels.max()) + 1

    # Descriptors of the initial regions.
    size = np.bincount(labels.ravel(), minlength=n).astype(np.float64)  # (n,)
    colour = _histograms(labels, image, n, COLOUR_BINS)  # (n, 75)
    if texture_responses is None:
        texture_responses = _texture_responses(image)  # (H, W, 24)
    texture = _histograms(labels, texture_responses, n, TEXTURE_BINS)  # (n, 240)
    boxes = np.array(  # (n, 4): each label's bounding slices as x1, y1, x2, y2
        [(cols.start, rows.start, cols.stop, rows.stop) for rows, cols in find_objects(labels + 1)], dtype=np.float64
    )
    sizes, colours, textures, all_boxes = list(size), list(colour), list(texture), list(boxes)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in _adjacent_pairs(labels):
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))

    def similarity(i: int, j: int) -> float:
        box = np.concatenate(
            [np.minimum(all_boxes[i][:2], all_boxes[j][:2]), np.maximum(all_boxes[i][2:], all_boxes[j][2:])]
        )
        box_area = (box[2] - box[0]) * (box[3] - box[1])
        s_colour = np.minimum(colours[i], colours[j]).sum()
        s_texture = np.minimum(textures[i], textures[j]).sum()
        s_size = 1.0 - (sizes[i] + sizes[j]) / image_area
        s_fill = 1.0 - (box_area - sizes[i] - sizes[j]) / image_area
        return float(s_colour + s_texture + s_size + s_fill)

    # A max-heap of similarities (negated for heapq); pairs with a merged-away region are skipped.
    heap = [(-similarity(a, b), a, b) for a in range(n) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    alive = [True] * n
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        t = len(sizes)  # the new region r_t = r_i ∪ r_j
        total = sizes[i] + sizes[j]
        sizes.append(total)
        colours.append((sizes[i] * colours[i] + sizes[j] * colours[j]) / total)
        textures.append((sizes[i] * textures[i] + sizes[j] * textures[j]) / total)
        all_boxes.append(
            np.concatenate(
                [np.minimum(all_boxes[i][:2], all_boxes[j][:2]), np.maximum(all_boxes[i][2:], all_boxes[j][2:])]
            )
        )
        alive[i] = alive[j] = False
        alive.append(True)
        merged_neighbours = (neighbours[i] | neighbours[j]) - {i, j}
        neighbours.append(merged_neighbours)
        for k in merged_neighbours:
            neighbours[k] -= {i, j}
            neighbours[k].add(t)
            heapq.heappush(heap, (-similarity(t, k), min(t, k), max(t, k)))

    # Position from the top: walk the creation order backwards; the regions still alive are the tops.
    m = len(sizes)
    level = np.empty(m, dtype=np.int64)
    level[::-1] = np.arange(1, m + 1)
    return np.asarray(all_boxes, dtype=np.float64), level


def selective_search(
    image,
    scales: tuple[float, ...] = (100.0, 300.0),
    sigma: float = 0.8,
    min_size: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective-search proposals of one image (3, H, W) (or (H, W, 3)) with values in [0, 1].

    Returns ``(boxes (N, 4) float32 xyxy, scores (N,) float32)``, boxes sorted by their rank (score falls
    from 1 with the rank; see the module docstring), duplicates removed. ``scales``: the Felzenszwalb k of
    each grouping; ``sigma``, ``min_size``: its smoothing and smallest segment.
    """
    if not scales:
        raise ValueError("selective_search needs at least one scale, e.g. scales=(100, 300)")
    hwc = _as_hwc_image(image)
    responses = _texture_responses(hwc)  # (H, W, 24), shared by every scale
    candidates = []  # (level, scale index, box)
    for scale_index, scale in enumerate(scales):
        labels = initial_regions(hwc, scale=scale, sigma=sigma, min_size=min_size)
        boxes, level = hierarchical_grouping(hwc, labels, responses)
        candidates += [(int(lv), scale_index, tuple(box)) for lv, box in zip(level, boxes)]
    candidates.sort(key=lambda item: (item[0], item[1]))
    seen, ranked = set(), []
    for _, _, box in candidates:
        if box not in seen:
            seen.add(box)
            ranked.append(box)
    boxes = torch.tensor(ranked, dtype=torch.float32).reshape(-1, 4)
    scores = 1.0 - torch.arange(len(ranked), dtype=torch.float32) / max(len(ranked), 1)
    return boxes, scores


# --------------------------------------------------------------------------------------------
# Post-processing and evaluation of boxes
# --------------------------------------------------------------------------------------------


def post_process_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    min_size: float = 25,
    iou_threshold: float = 0.3,
    max_detections: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's post-processing of one image's boxes (N, 4) and scores (N,).

    1. drop boxes whose width or height is below ``min_size`` pixels;
    2. class-agnostic non-maximum suppression: a box overlapping a higher-scoring kept box with
       IoU > ``iou_threshold`` is dropped (``torchvision.ops.nms``);
    3. keep the ``max_detections`` highest-scoring boxes.

    Returns the kept ``(boxes (K, 4), scores (K,))``, highest score first.
    """
    from torchvision.ops import nms

    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"post_process_boxes expects boxes (N, 4) and scores (N,); got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    large = (widths >= min_size) & (heights >= min_size)  # (N,)
    boxes, scores = boxes[large], scores[large]
    keep = nms(boxes.float(), scores.float(), iou_threshold)[:max_detections]  # sorted by score, descending
    return boxes[keep], scores[keep]


def proposal_recall(proposals: torch.Tensor, targets: torch.Tensor, iou: float = 0.5) -> float:
    """Fraction of the ``targets`` (T, 4) that some proposal (N, 4) covers with IoU ≥ ``iou``."""
    from torchvision.ops import box_iou

    if len(targets) == 0:
        raise ValueError("proposal_recall needs at least one target box")
    if len(proposals) == 0:
        return 0.0
    best = box_iou(targets.float(), proposals.float()).amax(dim=1)  # (T,)
    return float((best >= iou).float().mean())


# --------------------------------------------------------------------------------------------
# Proposal modules: batches of normalised images -> boxes per image
# --------------------------------------------------------------------------------------------


class SelectiveSearch(nn.Module):
    """Selective search on a batch of ImageNet-normalised images (no weights, deterministic).

    ``forward(images (B, 3, H, W)) -> list of (boxes (N_b, 4), scores (N_b,))``, before post-processing.
    """

    def __init__(
        self,
        scales: tuple[float, ...] = (100.0, 300.0),
        sigma: float = 0.8,
        min_size: int = 20,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.scales, self.sigma, self.min_size = tuple(float(s) for s in scales), float(sigma), int(min_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mean = images.new_tensor(self.mean)[None, :, None, None]
        std = images.new_tensor(self.std)[None, :, None, None]
        pixels = (images * std + mean).clamp(0, 1).cpu()  # (B, 3, H, W) in [0, 1]
        results = []
        for image in pixels:
            boxes, scores = selective_search(image, self.scales, self.sigma, self.min_size)
            results.append((boxes.to(images.device), scores.to(images.device)))
        return results


class DetectorProposals(nn.Module):
    """The reference's regions: torchvision's Faster R-CNN ResNet50-FPN with COCO weights.

    ``stage="rcnn"``: the detector's final boxes and confidences, with its per-class NMS switched off
    (``box_nms_thresh=1.0``, 1000 detections, ``box_score_thresh=score_threshold``) so that the
    class-agnostic `post_process_boxes` does it. ``stage="rpn"``: the raw proposals of the region
    proposal network, each with score 1.

    The weights are torchvision's ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` (downloaded once into the
    torch hub cache) or a local state-dict file ``weights``. Without either, `ProposalWeightsError`
    names the offline alternative. The detector is not a registered submodule: its 160 MB stay out of a
    saved model's state dict (it is rebuilt from the same weights).
    """

    def __init__(
        self,
        stage: str = "rcnn",
        score_threshold: float = 0.001,
        max_proposals: int = 1000,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        stage = ProposalMethod(stage)
        if stage is ProposalMethod.SELECTIVE_SEARCH:
            raise ValueError("DetectorProposals runs Faster R-CNN: stage must be 'rcnn' or 'rpn'; use SelectiveSearch")
        self.stage, self.score_threshold, self.max_proposals = stage, float(score_threshold), int(max_proposals)
        self.weights = weights
        self.__dict__["_detector"] = None  # built on first use, outside the state dict

    def detector(self, device: torch.device) -> nn.Module:
        if self.__dict__["_detector"] is None:
            from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

            detector = fasterrcnn_resnet50_fpn(
                weights=None,
                weights_backbone=None,
                box_score_thresh=self.score_threshold,
                box_nms_thresh=1.0,
                box_detections_per_img=self.max_proposals,
                rpn_post_nms_top_n_test=self.max_proposals,
            )
            detector.load_state_dict(self._state_dict(FasterRCNN_ResNet50_FPN_Weights.COCO_V1))
            self.__dict__["_detector"] = detector.eval()
        return self.__dict__["_detector"].to(device)

    def _state_dict(self, coco_weights) -> dict:
        if self.weights is not None:
            path = Path(self.weights)
            if not path.is_file():
                raise ProposalWeightsError(f"no Faster R-CNN weights file at {path}")
            return torch.load(path, map_location="cpu", weights_only=True)
        try:
            return coco_weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # offline: URLError, socket errors, a partial file...
            raise ProposalWeightsError(
                f"R-KDE's {self.stage.value!r} regions need torchvision's COCO Faster R-CNN weights, which could not "
                f"be downloaded ({type(error).__name__}: {error}). Use the offline proposals instead: "
                'proposals="selective_search" (adlearn evaluate rkde --set proposals=selective_search), or pass '
                "detector_weights= a local state-dict file of fasterrcnn_resnet50_fpn"
            ) from error

    @torch.no_grad()
    def forward(self, images: torch.Tensor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        detector = self.detector(images.device)
        pixels = images * images.new_tensor(std)[None, :, None, None] + images.new_tensor(mean)[None, :, None, None]
        pixels = list(pixels.clamp(0, 1))  # torchvision detectors take unnormalised [0, 1] images
        if self.stage is ProposalMethod.RCNN:
            outputs = detector(pixels)
            return [(out["boxes"], out["scores"]) for out in outputs]
        image_list, _ = detector.transform(pixels)
        features = detector.backbone(image_list.tensors)
        proposals, _ = detector.rpn(image_list, features)
        results = []
        for boxes, resized, original in zip(proposals, image_list.image_sizes, [p.shape[-2:] for p in pixels]):
            ratio_h, ratio_w = original[0] / resized[0], original[1] / resized[1]
            boxes = boxes[: self.max_proposals] * boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
            results.append((boxes, torch.ones(len(boxes), device=boxes.device)))
        return results


def warn_no_regions(what: str) -> None:
    """The warning for an image in which no region survives post-processing."""
    warnings.warn(
        f"{what}: no region proposal survived post-processing in an image; its score is 0 and its map is empty. "
        "Lower min_box_size or use more selective-search scales",
        RuntimeWarning,
        stacklevel=3,
    )
