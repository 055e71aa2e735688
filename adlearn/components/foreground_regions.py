"""Regions (objects) in a video clip: boxes and masks of what moves
(reference: ``anomalib.models.video.ai_vad.regions.RegionExtractor``).

AI-VAD (Reiss & Hoshen, AAAI 2023, Sec. 3.1 "Preprocessing") describes a scene by its objects. The
reference finds them with a COCO Mask R-CNN on the clip's last frame, then *adds* the moving things the
detector missed with a cheap foreground path. That foreground path is our offline default:

1. blur both frames with a ``kernel_size`` Gaussian (σ from the kernel size, as OpenCV/torchvision do);
2. ``|last − first|`` → grayscale → ``> binary_threshold / 255``: the pixels that changed;
3. (after a detector) clear the pixels inside its boxes, grown by 2 px;
4. every connected component (8-connectivity) becomes a region: its bounding box ``(x1, y1, x2, y2)``
   (``x2``, ``y2`` exclusive), label 0 ("background" in COCO's numbering), score 0.5, mask = its pixels.

Then every region set is filtered (`filter_regions`): drop boxes of area ``<= min_bbox_area``, then,
smallest first, drop a box whose intersection with a larger kept box covers more than
``max_bbox_overlap`` of its own area.

The frame difference sees only what changed: a slowly moving object shows as thin strips along its
leading and trailing edges, whose shape says nothing of the object's posture. Two background models give
whole silhouettes instead (`ForegroundDetector`):

* ``foreground="background"`` — a fixed camera's scene without its moving objects, the per-pixel median
  of the training frames (`median_background`); a frame's foreground is where it differs from that
  background by more than ``binary_threshold`` grey levels after a per-frame gain correction
  (`background_difference`), cleaned by an opening (drops noise specks) and a closing (joins an object's
  parts) (`clean_mask`), then cut into connected components as above;
* ``foreground="mog2"`` — OpenCV's adaptive Gaussian-mixture background model (Zivkovic, ICPR 2004), one
  per video, fed the frames in order (a warm-up on each video's first frames).

``detector="maskrcnn"`` is the reference's path: torchvision's Mask R-CNN ResNet50-FPN v2 with COCO
weights (downloaded once; offline it raises a clear error naming the foreground path).

Regions of one frame are a dict: ``boxes`` (n, 4) float, ``masks`` (n, H, W) bool, ``scores`` (n,),
``labels`` (n,) int64.
"""

from __future__ import annotations

import numpy as np
import torch

from adlearn.components.dynamic_buffer import DynamicBufferMixin

__all__ = [
    "FOREGROUND_METHODS",
    "ForegroundDetector",
    "RegionExtractor",
    "background_difference",
    "clean_mask",
    "connected_regions",
    "filter_regions",
    "foreground_mask",
    "median_background",
]


def _gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float → (N, H, W) luminance (ITU-R 601, as torchvision's rgb_to_grayscale)."""
    return frames @ np.array([0.299, 0.587, 0.114], dtype=frames.dtype)


def _blur(frames: torch.Tensor, kernel_size: int) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → blurred (N, H, W, 3) float32 NumPy (σ = 0.3((k−1)/2 − 1) + 0.8)."""
    import cv2

    array = frames.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    if kernel_size <= 1:
        return array
    return np.stack([cv2.GaussianBlur(frame, (kernel_size, kernel_size), 0) for frame in array])


def foreground_mask(
    first: torch.Tensor, last: torch.Tensor, kernel_size: int = 3, binary_threshold: int = 18
) -> torch.Tensor:
    """Steps 1–2: the changed pixels ``(N, H, W)`` bool between ``first`` and ``last`` ``(N, 3, H, W)``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"foreground kernel_size must be an odd positive int, got {kernel_size}")
    difference = np.abs(_blur(last, kernel_size) - _blur(first, kernel_size))  # (N, H, W, 3)
    return torch.from_numpy(_gray(difference) > binary_threshold / 255.0)  # (N, H, W)


def connected_regions(mask: torch.Tensor) -> dict:
    """Step 4: one region per 8-connected component of ``mask`` (H, W) bool."""
    import cv2

    count, ids, stats, _ = cv2.connectedComponentsWithStats(mask.numpy().astype(np.uint8), connectivity=8)
    x, y, w, h = (stats[1:, i] for i in range(4))  # component 0 is the background
    boxes = torch.from_numpy(np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)).reshape(-1, 4)
    ids = torch.from_numpy(ids)
    masks = torch.stack([ids == k for k in range(1, count)]) if count > 1 else torch.zeros(0, *mask.shape, dtype=bool)
    return {
        "boxes": boxes,  # (n, 4) x1, y1, x2, y2
        "masks": masks,  # (n, H, W)
        "scores": torch.full((count - 1,), 0.5),
        "labels": torch.zeros(count - 1, dtype=torch.long),
    }


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(n, 4) → (n,) areas in pixels."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def filter_regions(regions: dict, min_bbox_area: float = 100, max_bbox_overlap: float = 0.65) -> dict:
    """Drop small boxes, then boxes mostly covered by a larger one (smallest first)."""
    boxes = regions["boxes"]
    area = box_area(boxes)  # (n,)
    keep = area > min_bbox_area
    order = [int(i) for i in torch.argsort(area, stable=True) if keep[i]]  # smallest first
    for position, i in enumerate(order):
        larger = order[position + 1 :]
        if not larger:
            break
        top_left = torch.maximum(boxes[i, :2], boxes[larger, :2])  # (m, 2)
        bottom_right = torch.minimum(boxes[i, 2:], boxes[larger, 2:])
        intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)  # (m,)
        if bool((intersection / area[i] > max_bbox_overlap).any()):
            keep[i] = False
    return {key: value[keep] for key, value in regions.items()}


def clean_mask(mask: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Morphology on a foreground mask ``(H, W)`` bool: an opening with a ``size``×``size`` square drops
    specks of noise, then a closing with a twice larger square joins the parts of one object (a figure's
    limbs, a wheel and its body) that a thin gap of background-coloured pixels separates. ``size < 2``:
    unchanged."""
    import cv2

    if size < 2:
        return mask
    array = mask.numpy().astype(np.uint8)
    opened = cv2.morphologyEx(array, cv2.MORPH_OPEN, np.ones((size, size), np.uint8))
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, np.ones((2 * size - 1, 2 * size - 1), np.uint8))
    return torch.from_numpy(closed > 0)


def median_background(frames: np.ndarray) -> np.ndarray:
    """The scene without its moving objects: the per-pixel median of ``frames`` (N, H, W, 3) → (H, W, 3).

    Every object that moves covers a pixel in fewer than half of the frames, so the median is the
    background there (the classic static-camera background model; Piccardi, "Background subtraction
    techniques: a review", SMC 2004, Sec. 2)."""
    return np.median(frames, axis=0).astype(np.float32)


def background_difference(frames: np.ndarray, background: np.ndarray, binary_threshold: int = 18) -> torch.Tensor:
    """The pixels ``(N, H, W)`` bool of ``frames`` (N, H, W, 3) that differ from ``background`` (H, W, 3).

    A camera's exposure drifts: each frame's gain ``g`` is the median of ``frame / background`` over its
    pixels (most of them are background), and the difference is taken against ``g · background``."""
    gray_frames, gray_background = _gray(frames), _gray(background[None])[0]  # (N, H, W), (H, W)
    ratio = gray_frames / np.maximum(gray_background, 1e-3)
    gains = np.median(ratio.reshape(len(frames), -1), axis=1)  # (N,)
    difference = np.abs(gray_frames - gains[:, None, None] * gray_background)
    return torch.from_numpy(difference > binary_threshold / 255.0)


FOREGROUND_METHODS = ("difference", "background", "mog2")


class ForegroundDetector(DynamicBufferMixin):
    """What moves in each clip's last frame, by one of three methods:

    * ``"difference"`` — the reference's path: what changed between the clip's first and last frames. A
      slowly moving object shows only its leading and trailing edges.
    * ``"background"`` — what differs from the scene's background, the per-pixel median of the training
      frames (`fit`; a fixed camera), after a per-frame gain correction, cleaned by morphology
      (`clean_mask`): whole silhouettes, moving fast, slowly or not at all.
    * ``"mog2"`` — OpenCV's adaptive Gaussian-mixture background model (Zivkovic, ICPR 2004), one per
      video, fed the frames in order (it warms up on each video's first frames).

    Args:
        method: one of ``FOREGROUND_METHODS``.
        kernel_size, binary_threshold: the Gaussian blur applied to the frames and the grey-level threshold
            (0–255) of a changed pixel.
        morphology_size: `clean_mask`'s opening size (``"background"``; 1 turns the morphology off).
        max_background_frames: at most this many training frames (evenly spaced) enter the median.
    """

    def __init__(
        self,
        method: str = "difference",
        kernel_size: int = 3,
        binary_threshold: int = 18,
        morphology_size: int = 3,
        max_background_frames: int = 256,
    ) -> None:
        super().__init__()
        if method not in FOREGROUND_METHODS:
            raise ValueError(f"unknown foreground method {method!r}; choose one of {', '.join(FOREGROUND_METHODS)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"foreground kernel_size must be an odd positive int, got {kernel_size}")
        self.method, self.kernel_size, self.binary_threshold = method, int(kernel_size), int(binary_threshold)
        self.morphology_size, self.max_background_frames = int(morphology_size), int(max_background_frames)
        self.register_buffer("background", torch.empty(0))  # (H, W, 3) float32, ``"background"`` after fit
        self._models: dict[str, object] = {}
        self._training_frames: list[np.ndarray] = []
        self._stride = 1
        self._seen = 0

    @property
    def needs_fit(self) -> bool:
        return self.method == "background"

    def reset(self) -> None:
        """Forget the MOG2 background models (call before a new pass over the videos)."""
        self._models = {}

    # ----------------------------------------------------------------- the scene background (``"background"``)
    def update(self, frames: torch.Tensor) -> None:
        """Keep training frames ``(N, 3, H, W)`` for the median: every ``stride``-th frame, the stride doubling
        (and every other kept frame dropped) whenever more than ``max_background_frames`` are kept."""
        for frame in _blur(frames, self.kernel_size):
            if self._seen % self._stride == 0:
                self._training_frames.append(frame)
            self._seen += 1
            if len(self._training_frames) > self.max_background_frames:
                self._training_frames, self._stride = self._training_frames[::2], self._stride * 2

    def fit(self, frames: torch.Tensor | None = None) -> ForegroundDetector:
        """The median background of the frames given to `update` (and of ``frames`` (N, 3, H, W), if given)."""
        if frames is not None:
            self.update(frames)
        if not self._training_frames:
            raise ValueError("foreground 'background' needs training frames: call update(frames) or fit(frames)")
        self.background = torch.from_numpy(median_background(np.stack(self._training_frames)))
        self._training_frames, self._stride, self._seen = [], 1, 0
        return self

    def __call__(self, first: torch.Tensor, last: torch.Tensor, videos: list[str] | None = None) -> torch.Tensor:
        if self.method == "difference":
            return foreground_mask(first, last, self.kernel_size, self.binary_threshold)
        if self.method == "background":
            return self._background(last)
        return self._mog2(first, last, videos or [str(i) for i in range(len(first))])

    def _background(self, last: torch.Tensor) -> torch.Tensor:
        if self.background.numel() == 0:
            raise RuntimeError("foreground 'background' is not fitted: call fit(training_frames) first")
        if tuple(self.background.shape[:2]) != tuple(last.shape[-2:]):
            raise ValueError(
                f"the background was fitted on {self.background.shape[0]}x{self.background.shape[1]} frames; "
                f"got {last.shape[-2]}x{last.shape[-1]}: give frames of the training size"
            )
        changed = background_difference(
            _blur(last, self.kernel_size), self.background.cpu().numpy(), self.binary_threshold
        )
        return torch.stack([clean_mask(mask, self.morphology_size) for mask in changed])  # (N, H, W)

    def _mog2(self, first: torch.Tensor, last: torch.Tensor, videos: list[str]) -> torch.Tensor:
        import cv2

        masks = []
        for a, b, video in zip(_blur(first, self.kernel_size), _blur(last, self.kernel_size), videos):
            model = self._models.get(video)
            if model is None:  # a new video: its first frame starts the background
                model = self._models[video] = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
                model.apply((a * 255).astype(np.uint8))
            masks.append(torch.from_numpy(model.apply((b * 255).astype(np.uint8)) > 0))
        return torch.stack(masks)  # (N, H, W)


class RegionExtractor:
    """Regions of each clip's last frame (the reference's defaults).

    Args:
        detector: ``"foreground"`` (offline: the foreground path alone) or ``"maskrcnn"`` (COCO Mask R-CNN
            on the last frame, plus the foreground path when ``enable_foreground_detections``).
        box_score_thresh: the detector's confidence threshold. persons_only: keep COCO "person" only.
        min_bbox_area, max_bbox_overlap: `filter_regions`.
        foreground: one of ``FOREGROUND_METHODS`` (`ForegroundDetector`); foreground_kernel_size,
            foreground_binary_threshold, foreground_morphology: its blur, threshold and morphology size.
    """

    def __init__(
        self,
        detector: str = "foreground",
        box_score_thresh: float = 0.7,
        persons_only: bool = False,
        min_bbox_area: float = 100,
        max_bbox_overlap: float = 0.65,
        enable_foreground_detections: bool = True,
        foreground: str = "difference",
        foreground_kernel_size: int = 3,
        foreground_binary_threshold: int = 18,
        foreground_morphology: int = 3,
        device="cpu",
    ) -> None:
        if detector not in ("foreground", "maskrcnn"):
            raise ValueError(f"unknown region detector {detector!r}; choose 'foreground' or 'maskrcnn'")
        if detector == "foreground" and not enable_foreground_detections:
            raise ValueError("detector='foreground' needs enable_foreground_detections=True (else no region)")
        self.detector, self.box_score_thresh, self.persons_only = detector, box_score_thresh, persons_only
        self.min_bbox_area, self.max_bbox_overlap = min_bbox_area, max_bbox_overlap
        self.enable_foreground_detections = enable_foreground_detections
        self.foreground = ForegroundDetector(
            foreground, foreground_kernel_size, foreground_binary_threshold, foreground_morphology
        )
        self.device = torch.device(device)
        self._maskrcnn = None

    def __call__(self, first: torch.Tensor, last: torch.Tensor, videos: list[str] | None = None) -> list[dict]:
        """``first``, ``last`` (N, 3, H, W) in [0, 1] → one region dict per clip."""
        height, width = last.shape[-2:]
        if self.detector == "maskrcnn":
            regions = self._detect(last)
        else:
            regions = [self._empty(height, width) for _ in range(len(last))]
        if self.enable_foreground_detections:
            moving = self.foreground(first, last, videos)  # (N, H, W)
            regions = [self._add_foreground(r, m) for r, m in zip(regions, moving)]
        return [filter_regions(r, self.min_bbox_area, self.max_bbox_overlap) for r in regions]

    @staticmethod
    def _empty(height: int, width: int) -> dict:
        return {
            "boxes": torch.zeros(0, 4),
            "masks": torch.zeros(0, height, width, dtype=torch.bool),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }

    @staticmethod
    def _add_foreground(regions: dict, moving: torch.Tensor) -> dict:
        moving = moving.clone()  # (H, W)
        for x1, y1, x2, y2 in regions["boxes"].round().long().tolist():  # step 3: clear detected boxes (+2 px)
            moving[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = False
        found = connected_regions(moving)
        return {key: torch.cat([regions[key], found[key].to(regions[key].dtype)]) for key in regions}

    def _detect(self, frames: torch.Tensor) -> list[dict]:
        if self._maskrcnn is None:
            from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

            try:
                weights = MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
                model = maskrcnn_resnet50_fpn_v2(
                    weights=weights, box_score_thresh=self.box_score_thresh, rpn_nms_thresh=0.3, progress=False
                )
            except Exception as error:
                raise RuntimeError(
                    "region detector 'maskrcnn' needs torchvision's COCO Mask R-CNN weights, which could not be "
                    f"loaded ({type(error).__name__}: {error}). Offline, use region_detector='foreground'"
                ) from error
            self._maskrcnn = model.eval().to(self.device)
        with torch.no_grad():
            outputs = self._maskrcnn(list(frames.to(self.device)))
        regions = []
        for output in outputs:
            keep = output["labels"] == 1 if self.persons_only else torch.ones_like(output["labels"], dtype=torch.bool)
            regions.append(
                {
                    "boxes": output["boxes"][keep].cpu(),
                    "masks": (output["masks"][keep, 0] > 0.5).cpu(),
                    "scores": output["scores"][keep].cpu(),
                    "labels": output["labels"][keep].cpu(),
                }
            )
        return regions
