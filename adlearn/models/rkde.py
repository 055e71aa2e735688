"""R-KDE — region-based kernel density estimation.

Paper: "Region Based Anomaly Detection With Real-Time Training and Analysis" (IEEE, document
8999287; anomalib calls the model "Region-Based Kernel Density Estimation"). Reference implementation:
``anomalib.models.image.rkde`` (``torch_model``, ``region_extractor``, ``feature_extractor``) with
``anomalib.models.components.classification.KDEClassifier``.

Idea: an anomaly is usually an *object* or a part of one — a crack, a speck, a missing piece. So look
at regions, not pixels or whole images: propose a few hundred boxes per image that are likely to
contain something, describe each box by a feature vector, and model where the boxes of normal images
lie with a kernel density estimate (DFKDE's classifier, on boxes instead of images). A box whose
vector falls where normal boxes are sparse is anomalous; the image is as anomalous as its worst box.

    boxes  = post_process(proposals(image))           drop sides < 25 px, NMS at IoU 0.3, top 100
    x_b    = RoIAlign(features(image), b)             one vector per box b
    P_b    = 1 / (1 + exp(0.05 · (log p(z̃_b) − 12)))  KDEClassifier: PCA₁₆, scaling, Gaussian KDE
    score(image) = max_b P_b                          (0 when no box survives, with a warning)
    map(pixel)   = max { P_b : b covers the pixel }   (0 where no box does)

The steps:

1. Regions (`propose_regions`): selective search by default (`SelectiveSearch`, offline, no weights);
   ``proposals="rcnn"`` / ``"rpn"`` uses the reference's COCO Faster R-CNN (`DetectorProposals`, a
   download). Then `post_process_boxes` with the reference's defaults.
2. RoI features (`extract_features`): RoIAlign on a stage of a pretrained backbone
   (`RoiFeatureExtractor`); ``roi_features="alexnet"`` is the reference's 4096-d trunk
   (`AlexNetRoiTrunk`, its weights from a local file ``roi_weights``).
3. Fit (`collect`, `fit_bank`): the RoI features of every training box → `KDEClassifier` (at most
   ``max_training_points`` random boxes → PCA → scaling → Gaussian KDE). No optimizer.
4. Region scores (`region_scores`): the classifier's probability of being anomalous, per box.
5. Image score and map (`rkde_image_score`, `rkde_anomaly_map`), as above.

Defaults (the reference's): ``roi_score_threshold=0.001``, ``min_box_size=25``, ``iou_threshold=0.3``,
``max_detections_per_image=100``, ``n_pca_components=16``, ``feature_scaling_method="scale"``,
``max_training_points=40000``.

Differences from anomalib, and why:

* Offline by default. The reference's two stages need two downloads (COCO Faster R-CNN and an
  AlexNet-style RoI network); the defaults here are selective search (Uijlings et al., 2013) and RoIAlign
  on ``efficientnet_lite0``'s stride-16 stage, both without a network. Both reference paths are kept
  (``proposals="rcnn"|"rpn"``, ``roi_features="alexnet"``: the ``paper`` preset); offline they stop with
  an error naming the offline option.
* Selective-search boxes have no detector confidence: ``roi_score_threshold`` applies to the detector
  only, and NMS keeps the boxes higher in the grouping hierarchy (`selective_search`'s ranking).
* An image without any surviving box scores 0 and has an empty map, with a warning (the reference
  returns no box and leaves the image score undefined).
* `predict` returns the image score and the box-painted map (the reference's post-processing) with the
  boxes and their scores (`Prediction.boxes`, `Prediction.box_scores`).
"""

from __future__ import annotations

import torch

from adlearn.components import KDEClassifier
from adlearn.components.region_proposals import (
    DetectorProposals,
    ProposalMethod,
    SelectiveSearch,
    post_process_boxes,
    warn_no_regions,
)
from adlearn.components.roi_features import AlexNetRoiTrunk, RoiFeatureExtractor, rois_from_boxes
from adlearn.models.base import MemoryBankModel, Prediction

__all__ = ["Rkde", "rkde_anomaly_map", "rkde_image_score"]


# Step 5: the post-processing formulas.
def rkde_image_score(box_scores: list[torch.Tensor]) -> torch.Tensor:
    """Image score = the largest box score; 0 for an image without boxes. [(N_b,)] -> (B,)."""
    return torch.stack([scores.max() if len(scores) else scores.new_zeros(()) for scores in box_scores])


def rkde_anomaly_map(boxes: list[torch.Tensor], box_scores: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Each pixel takes the largest score of the boxes covering it (0 where none does): (B, H, W).

    A box (x1, y1, x2, y2) covers pixel (row r, column c) when floor(x1) ≤ c < ceil(x2) and
    floor(y1) ≤ r < ceil(y2) (for integer boxes: the pixels [x1, x2) × [y1, y2)).
    """
    height, width = size
    maps = []
    for image_boxes, scores in zip(boxes, box_scores):
        columns = torch.arange(width, device=scores.device)  # (W,)
        rows = torch.arange(height, device=scores.device)  # (H,)
        x1, y1 = image_boxes[:, 0].floor()[:, None], image_boxes[:, 1].floor()[:, None]  # (N, 1)
        x2, y2 = image_boxes[:, 2].ceil()[:, None], image_boxes[:, 3].ceil()[:, None]
        in_columns = (columns >= x1) & (columns < x2)  # (N, W)
        in_rows = (rows >= y1) & (rows < y2)  # (N, H)
        covers = in_rows[:, :, None] & in_columns[:, None, :]  # (N, H, W)
        painted = torch.where(covers, scores[:, None, None], torch.zeros((), device=scores.device))
        maps.append(painted.amax(dim=0) if len(scores) else scores.new_zeros(height, width))  # (H, W)
    return torch.stack(maps)


class Rkde(MemoryBankModel):
    name = "rkde"
    task = "detection"  # boxes with scores; the image score and the map are derived from them
    presets = {
        # The reference's regions and RoI network: a download and a weights file (roi_weights=...).
        "paper": {"proposals": "rcnn", "roi_features": "alexnet"},
        # Offline, on 2 cores: selective search at two scales, RoIAlign on efficientnet_lite0's stride-16 stage.
        "cpu": {"proposals": "selective_search", "roi_features": "backbone", "backbone": "efficientnet_lite0"},
    }

    def __init__(
        self,
        proposals: str = "selective_search",
        roi_features: str = "backbone",
        backbone: str = "efficientnet_lite0",
        layer: str = "layer3",
        roi_output_size: int = 2,
        pretrained: str = "auto",
        selective_search_scales: tuple[float, ...] = (100.0, 300.0),
        selective_search_sigma: float = 0.8,
        selective_search_min_size: int = 20,
        detector_weights: str | None = None,
        roi_weights: str | None = None,
        roi_score_threshold: float = 0.001,
        min_box_size: int = 25,
        iou_threshold: float = 0.3,
        max_detections_per_image: int = 100,
        n_pca_components: int = 16,
        feature_scaling_method: str = "scale",
        max_training_points: int = 40000,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size
        )
        self.save_hyperparameters()
        try:
            self.proposal_method = ProposalMethod(proposals)
        except ValueError as error:
            raise ValueError(
                f"proposals must be one of {[m.value for m in ProposalMethod]}, got {proposals!r}"
            ) from error
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if int(max_detections_per_image) < 1:
            raise ValueError(f"max_detections_per_image must be >= 1, got {max_detections_per_image}")
        self.min_box_size, self.iou_threshold = float(min_box_size), float(iou_threshold)
        self.max_detections_per_image = int(max_detections_per_image)

        # Step 1: the region proposals (no learnable weights in the state dict).
        if self.proposal_method is ProposalMethod.SELECTIVE_SEARCH:
            if isinstance(selective_search_scales, (int, float)):
                selective_search_scales = (selective_search_scales,)
            self.region_extractor = SelectiveSearch(
                selective_search_scales, sigma=selective_search_sigma, min_size=selective_search_min_size
            )
        else:
            self.region_extractor = DetectorProposals(
                self.proposal_method.value, score_threshold=roi_score_threshold, weights=detector_weights
            )

        # Step 2: the RoI features.
        if roi_features == "backbone":
            self.feature_extractor = RoiFeatureExtractor(backbone, layer, roi_output_size, pretrained=pretrained)
        elif roi_features == "alexnet":
            if roi_weights is None:
                raise ValueError(
                    'roi_features="alexnet" is the reference\'s RoI network, whose trained weights are a download '
                    "(anomalib's rkde_feature_extractor.pth): pass roi_weights=<that file>, or use the offline "
                    'RoI features, roi_features="backbone" (the cpu preset)'
                )
            self.feature_extractor = AlexNetRoiTrunk(roi_weights)
        else:
            raise ValueError(f"roi_features must be 'backbone' or 'alexnet', got {roi_features!r}")

        # Steps 3-4: the density of normal regions.
        self.classifier = KDEClassifier(
            n_pca_components=n_pca_components,
            feature_scaling_method=feature_scaling_method,
            max_training_points=max_training_points,
            seed=seed,
        )

    # Step 1: regions, post-processed as the reference does.
    def propose_regions(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Boxes per image [(N_b, 4) xyxy], after dropping small boxes, NMS and keeping the top ones."""
        boxes = []
        for image_boxes, scores in self.region_extractor(images):
            kept, _ = post_process_boxes(
                image_boxes, scores, self.min_box_size, self.iou_threshold, self.max_detections_per_image
            )
            boxes.append(kept.to(images.device))
        return boxes

    # Step 2: one feature vector per box.
    def extract_features(
        self, images: torch.Tensor, boxes: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(RoI features (ΣN_b, D), boxes per image); the boxes are proposed unless given."""
        if boxes is None:
            boxes = self.propose_regions(images)
        rois = rois_from_boxes(boxes).to(images.device)  # (ΣN_b, 5)
        if len(rois) == 0:
            return images.new_zeros(0, self.feature_extractor.out_dim), boxes
        return self.feature_extractor(images, rois), boxes

    # Step 3: fit the KDE on the training boxes.
    def collect(self, images: torch.Tensor) -> torch.Tensor:
        features, boxes = self.extract_features(images)
        for image_boxes in boxes:
            if len(image_boxes) == 0:
                warn_no_regions(f"{self.name} (training image)")
        return features  # (ΣN_b, D)

    def fit_bank(self, features: torch.Tensor) -> None:  # (N, D)
        n_components = self.classifier.n_pca_components
        if features.shape[0] <= n_components:
            raise ValueError(
                f"R-KDE got {features.shape[0]} training regions but n_pca_components={n_components}: the KDE "
                f"needs more regions than PCA components. Train on more images, lower min_box_size, or lower "
                f"n_pca_components (e.g. n_pca_components={max(1, features.shape[0] // 2)})"
            )
        self.classifier.fit(features, strict=True)

    # Step 4: the probability that each box is anomalous.
    def region_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) in (0, 1)."""
        if len(features) == 0:
            return features.new_zeros(0)
        return self.classifier.predict(features)

    # Step 5: image score and box-painted map.
    def predict_step(self, images: torch.Tensor) -> Prediction:
        features, boxes = self.extract_features(images)
        scores = self.region_scores(features).split([len(b) for b in boxes])  # [(N_b,)]
        if any(len(b) == 0 for b in boxes):
            warn_no_regions(self.name)
        scores = [s.float() for s in scores]
        return Prediction(
            pred_score=rkde_image_score(scores),
            anomaly_map=rkde_anomaly_map(boxes, scores, tuple(images.shape[-2:])),
            boxes=list(boxes),
            box_scores=scores,
        )

    @property
    def n_training_regions(self) -> int:
        """How many training boxes the KDE holds (after the ``max_training_points`` subset)."""
        return int(self.classifier.kde_model.dataset.shape[0]) if self.classifier.is_fitted else 0
