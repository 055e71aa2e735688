"""The three attributes AI-VAD gives every region: velocity, pose and deep appearance
(reference: ``anomalib.models.video.ai_vad.features``: ``VelocityExtractor``, ``PoseExtractor``,
``DeepExtractor``).

Reiss & Hoshen, AAAI 2023, Sec. 3.2 describe an object by three human-readable attributes:

* **velocity** (`velocity_histogram`) — the optical flow inside the box, RoI-aligned to a fixed grid;
  per flow pixel its speed ``‖F‖`` and direction ``θ = atan2(dy, dx)``; the direction circle
  [−π, π) is cut into ``n_bins`` equal bins and each bin holds the **mean speed** of its pixels (0 for
  an empty bin). With one bin: the mean speed in the box. (The reference writes ``atan2(dx, dy)``; that
  only relabels the bins.)
* **pose** (`shape_pose`) — the reference runs a COCO Keypoint R-CNN on the box and keeps its 17 (x, y)
  keypoints normalised to the box, 34 numbers. Offline we have no keypoint model, so **a stand-in
  computed from the region's silhouette** (its mask) gives 17 points the same way: the centroid; the
  8 extremal silhouette points in the directions 0°, 45°, …, 315° (each the mean of the pixels within
  half a pixel of the furthest one: head, feet, hands of a walking person); the ends of the ±1 σ
  principal axes from the second central moments (4 points: how elongated and how tilted); and the
  centroids of the 4 quadrants around the centroid (how the mass is spread). Each point ``p`` is
  normalised to the box: ``(p − box_min) / box_size``. It describes the shape's layout, not a
  skeleton: a person lying down or bending differs from one walking, as keypoints would.
* **deep** (`RoiDeepFeatures`) — the reference RoI-aligns the RGB frame to 224×224 per box and takes
  CLIP ViT-B/16's 512-d image embedding. Offline: the same crops through the packaged ImageNet
  ``efficientnet_lite0`` (``model="efficientnet_lite0"``), global-average-pooled; ``model="clip"`` is the
  reference's encoder through ``open_clip`` (its weights are downloaded once; offline a clear error).

Boxes are ``(M, 5)``: batch index, x1, y1, x2, y2 (``torchvision.ops.roi_align``'s format).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import roi_align

__all__ = ["KeypointPose", "RoiDeepFeatures", "shape_pose", "velocity_histogram"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _check_boxes(boxes: torch.Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (M, 5): batch index, x1, y1, x2, y2; got {tuple(boxes.shape)}")


def velocity_histogram(
    flow: torch.Tensor, boxes: torch.Tensor, n_bins: int = 8, output_size: int = 224, masks: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean speed per direction bin inside each box: flow (N, 2, H, W), boxes (M, 5) → (M, n_bins).

    With ``masks`` (M, H, W) (each region's silhouette in its frame), each flow sample is weighted by how
    much of it lies on the silhouette, so the background inside a box (between a walker's legs) does not
    dilute the object's speed; a region whose mask misses its box falls back to the whole box."""
    _check_boxes(boxes)
    if n_bins < 1:
        raise ValueError(f"n_velocity_bins must be >= 1, got {n_bins}")
    if len(boxes) == 0:
        return flow.new_zeros(0, n_bins)
    crops = roi_align(flow, boxes.to(flow), output_size=output_size, aligned=False)  # (M, 2, S, S)
    dx, dy = crops[:, 0].flatten(1), crops[:, 1].flatten(1)  # (M, S·S)
    weights = torch.ones_like(dx)  # (M, S·S)
    if masks is not None:
        if masks.shape != (len(boxes), *flow.shape[-2:]):
            raise ValueError(f"masks must be (M, H, W) = ({len(boxes)}, {flow.shape[-2]}, {flow.shape[-1]})")
        own = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes[:, 1:]], 1)  # region m → mask m
        inside = roi_align(masks[:, None].to(flow), own.to(flow), output_size=output_size, aligned=False).flatten(1)
        weights = torch.where(inside.sum(1, keepdim=True) > 0, inside, weights)
    speed = torch.sqrt(dx**2 + dy**2)
    angle = torch.atan2(dy, dx)  # [−π, π]
    bins = ((angle + math.pi) / (2 * math.pi) * n_bins).long().clamp(0, n_bins - 1)  # (M, S·S)
    sums = flow.new_zeros(len(boxes), n_bins).scatter_add_(1, bins, speed * weights)  # (M, n_bins)
    counts = flow.new_zeros(len(boxes), n_bins).scatter_add_(1, bins, weights)
    return torch.where(counts > 0, sums / counts.clamp(min=1e-12), torch.zeros_like(sums))


def _pose_points(ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """17 (x, y) points of one silhouette given its pixel centres → (17, 2) in pixels."""
    points = torch.stack([xs, ys], dim=1)  # (P, 2)
    centroid = points.mean(dim=0)  # (2,)
    centred = points - centroid
    # 8 extremal points: the silhouette pixels furthest along each direction (x right, y down)
    angles = torch.arange(8, dtype=points.dtype) * (math.pi / 4)
    directions = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (8, 2)
    projections = centred @ directions.T  # (P, 8)
    at_edge = (projections >= projections.max(dim=0).values - 0.5).to(points.dtype)  # the outermost pixels (ties)
    extremal = (at_edge.T @ points) / at_edge.sum(dim=0)[:, None]  # (8, 2): their mean
    # principal axes: centroid ± √λ·e from the second central moments
    covariance = centred.T @ centred / len(points)  # (2, 2)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    axes = []
    for k in (1, 0):  # major, then minor axis
        e = eigenvectors[:, k]
        e = e if (e[0] > 0 or (e[0] == 0 and e[1] >= 0)) else -e  # a fixed sign
        step = e * eigenvalues[k].clamp(min=0).sqrt()
        axes += [centroid + step, centroid - step]
    # quadrant centroids (an empty quadrant gives the centroid)
    quadrants = []
    for right, below in ((True, False), (False, False), (False, True), (True, True)):
        inside = ((centred[:, 0] >= 0) == right) & ((centred[:, 1] >= 0) == below)
        quadrants.append(points[inside].mean(dim=0) if inside.any() else centroid)
    return torch.cat([centroid[None], extremal, torch.stack(axes), torch.stack(quadrants)])  # (17, 2)


def shape_pose(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Shape-pose stand-in for keypoints: masks (M, H, W) bool, boxes (M, 4) x1, y1, x2, y2 → (M, 34).

    Each of the 17 points is normalised to its box, ``(p − (x1, y1)) / (x2 − x1, y2 − y1)``; a region
    whose mask is empty inside its box uses the filled box.
    """
    if masks.ndim != 3 or boxes.ndim != 2 or boxes.shape[1] != 4 or len(masks) != len(boxes):
        raise ValueError(
            f"shape_pose expects masks (M, H, W) and boxes (M, 4); got {tuple(masks.shape)}, {tuple(boxes.shape)}"
        )
    features = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        top, left = int(math.floor(y1)), int(math.floor(x1))
        crop = mask[top : int(math.ceil(y2)), left : int(math.ceil(x2))]
        if not crop.any():
            crop = torch.ones(max(int(math.ceil(y2)) - top, 1), max(int(math.ceil(x2)) - left, 1), dtype=torch.bool)
        ys, xs = torch.nonzero(crop, as_tuple=True)
        points = _pose_points(ys.double() + top + 0.5, xs.double() + left + 0.5)  # pixel centres
        size = torch.tensor([max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)], dtype=torch.float64)
        features.append(((points - torch.tensor([x1, y1], dtype=torch.float64)) / size).flatten())
    if not features:
        return torch.zeros(0, 34)
    return torch.stack(features).float()  # (M, 34)


class KeypointPose(nn.Module):
    """The reference's pose attribute: a COCO Keypoint R-CNN's 17 keypoints of each box, normalised to the
    box → (M, 34) (reference: ``anomalib.models.video.ai_vad.features.PoseExtractor``).

    The given boxes (not the detector's own) go through the network's keypoint head: backbone features of
    the frame, RoI-pooled per box, the keypoint heat maps, their arg-max per keypoint; then
    ``(keypoint − (x1, y1)) / (x2 − x1, y2 − y1)``.

    Args:
        weights: a path to torchvision's ``keypointrcnn_resnet50_fpn`` COCO state dict; ``None``: torchvision's
            own copy (downloaded once into its cache). Without either, a clear error names the offline
            silhouette pose (``pose_method="silhouette"``).
    """

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.network = self._load(weights)

    @staticmethod
    def _load(weights: str | None) -> nn.Module:
        from pathlib import Path

        from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights, keypointrcnn_resnet50_fpn

        offline = "Offline, use pose_method='silhouette' (the silhouette stand-in, the default)"
        if weights is not None:
            if not Path(weights).is_file():
                raise FileNotFoundError(
                    f"pose_weights={str(weights)!r} is not a file: give the path of torchvision's "
                    f"keypointrcnn_resnet50_fpn COCO state dict. {offline}"
                )
            network = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return network.eval().requires_grad_(False)
        try:
            network = keypointrcnn_resnet50_fpn(weights=KeypointRCNN_ResNet50_FPN_Weights.DEFAULT, progress=False)
        except Exception as error:  # no network, no cached file
            raise RuntimeError(
                "pose_method='keypoints' needs torchvision's COCO Keypoint R-CNN weights, which could not be "
                f"loaded ({type(error).__name__}: {error}). Give pose_weights=PATH to a downloaded copy. {offline}"
            ) from error
        return network.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """frames (N, 3, H, W) in [0, 1], boxes (M, 5) → (M, 34) keypoints normalised to their boxes."""
        from torchvision.models.detection.roi_heads import keypointrcnn_inference

        _check_boxes(boxes)
        if len(boxes) == 0:
            return torch.zeros(0, 34)
        network = self.network
        images, _ = network.transform(list(frames))  # resized and normalised as the detector expects
        features = network.backbone(images.tensors.to(frames.device))
        scale = torch.tensor(
            [[new_w / frames.shape[-1], new_h / frames.shape[-2]] * 2 for new_h, new_w in images.image_sizes]
        ).to(boxes)  # (N, 4)
        per_frame = [boxes[boxes[:, 0] == i, 1:] * scale[i] for i in range(len(frames))]  # [(m_i, 4)]
        pooled = network.roi_heads.keypoint_roi_pool(features, per_frame, images.image_sizes)
        logits = network.roi_heads.keypoint_predictor(network.roi_heads.keypoint_head(pooled))  # (M, 17, s, s)
        keypoints, _ = keypointrcnn_inference(logits, per_frame)  # [(m_i, 17, 3)] x, y, visibility
        rows = []
        for frame_keypoints, frame_boxes in zip(keypoints, per_frame):
            size = (frame_boxes[:, 2:] - frame_boxes[:, :2]).clamp(min=1e-6)  # (m, 2)
            rows.append(((frame_keypoints[..., :2] - frame_boxes[:, None, :2]) / size[:, None]).flatten(1))
        order = torch.cat([torch.nonzero(boxes[:, 0] == i)[:, 0] for i in range(len(frames))])
        result = torch.empty(len(boxes), 34)
        result[order] = torch.cat(rows).float().cpu()
        return result  # (M, 34)


class RoiDeepFeatures(nn.Module):
    """Appearance features of each box: RoI-aligned RGB crops through a frozen encoder → (M, D).

    Args:
        model: ``"efficientnet_lite0"`` (or another timm backbone; offline ImageNet weights) or ``"clip"``
            (the reference's OpenAI CLIP ViT-B/16 through ``open_clip``, weights downloaded once).
        layer: the backbone stage whose map is average-pooled (timm backbones).
        crop_size: the RoI-aligned crop's side (the reference's 224).
        pretrained: the timm backbone's weights (``"auto"``, ``"none"``, a path).
    """

    def __init__(
        self, model: str = "efficientnet_lite0", layer: str = "layer4", crop_size: int = 224, pretrained="auto"
    ) -> None:
        super().__init__()
        self.model_name, self.crop_size = model, int(crop_size)
        if model == "clip":
            self.encoder = self._load_clip()
            mean, std = CLIP_MEAN, CLIP_STD
        else:
            from adlearn.components.feature_extractors import TimmFeatureExtractor

            self.encoder = TimmFeatureExtractor(model, [layer], pre_trained=pretrained)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _load_clip() -> nn.Module:
        try:
            import open_clip

            model, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained="openai")
        except Exception as error:
            raise RuntimeError(
                "backbone='clip' needs open_clip (pip install open-clip-torch) and OpenAI's ViT-B/16 weights, "
                f"which could not be loaded ({type(error).__name__}: {error}). Offline, use "
                "backbone='efficientnet_lite0'"
            ) from error
        return model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, boxes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """frames (N, 3, H, W) in [0, 1], boxes (M, 5) → (M, D)."""
        _check_boxes(boxes)
        outputs = []
        for chunk in boxes.split(batch_size):
            crops = roi_align(frames, chunk.to(frames), output_size=self.crop_size, aligned=False)  # (m, 3, S, S)
            crops = (crops - self.mean) / self.std
            if self.model_name == "clip":
                outputs.append(self.encoder.encode_image(crops).float())  # (m, 512)
            else:
                feature_map = next(iter(self.encoder(crops).values()))  # (m, C, s, s)
                outputs.append(feature_map.mean(dim=(2, 3)))  # (m, C)
        if not outputs:
            return frames.new_zeros(0, self.output_dim)
        return torch.cat(outputs)

    @property
    def output_dim(self) -> int:
        if self.model_name == "clip":
            return 512
        return self.encoder.out_dims[0] if hasattr(self.encoder, "out_dims") else 320
