"""Region proposals: selective search finds known objects, the hierarchy is complete, post-processing
matches a brute-force greedy NMS, and the detector path fails offline with a message naming the
offline method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adlearn.components.region_proposals import (
    DetectorProposals,
    ProposalWeightsError,
    SelectiveSearch,
    hierarchical_grouping,
    initial_regions,
    post_process_boxes,
    proposal_recall,
    selective_search,
)

RECALL_FLOOR = 0.9  # measured 0.99 on 30 such scenes (seeds 0-29, 128 px, 5 objects each)


def generated_scene(seed: int, size: int = 128, n_objects: int = 5) -> tuple[np.ndarray, torch.Tensor]:
    """A noisy background with a colour ramp and ``n_objects`` flat-coloured rectangles and ellipses
    (later ones may hide earlier ones). Returns the (H, W, 3) image in [0, 1] and the bounding boxes
    (K, 4) of the visible part of every object."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None]  # (1, W, 1)
    image = rng.uniform(0.2, 0.8, 3) + 0.3 * rng.uniform(-1, 1, 3) * ramp + rng.normal(0, 0.06, (size, size, 3))
    owner = -np.ones((size, size), dtype=int)
    columns, rows = np.meshgrid(np.arange(size), np.arange(size))
    for k in range(n_objects):
        w, h = rng.integers(size // 10, size // 3, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        if k % 2 == 0:  # a rectangle
            inside = (columns >= x) & (columns < x + w) & (rows >= y) & (rows < y + h)
        else:  # an ellipse
            inside = ((columns + 0.5 - x - w / 2) / (w / 2)) ** 2 + ((rows + 0.5 - y - h / 2) / (h / 2)) ** 2 <= 1
        image[inside] = rng.uniform(0, 1, 3) + rng.normal(0, 0.06, (int(inside.sum()), 3))
        owner[inside] = k
    boxes = []
    for k in range(n_objects):
        ys, xs = np.nonzero(owner == k)
        if len(xs):
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return np.clip(image, 0, 1), torch.tensor(boxes, dtype=torch.float32)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Textbook greedy NMS, one box at a time, with IoU computed by hand."""

    def iou(a, b):
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(iou(boxes[i].tolist(), boxes[j].tolist()) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def test_selective_search_recalls_the_objects_of_generated_scenes():
    recalls = []
    for seed in range(10):
        image, targets = generated_scene(seed)
        boxes, _ = selective_search(image)
        recalls.append(proposal_recall(boxes, targets, iou=0.5))
    recall = float(np.mean(recalls))
    print(f"selective search recall at IoU 0.5 on 10 generated scenes: {recall:.3f}")
    assert recall >= RECALL_FLOOR, recalls


def test_recall_survives_post_processing_for_objects_above_the_minimum_size():
    recalls = []
    for seed in range(10):
        image, targets = generated_scene(seed)
        boxes, scores = selective_search(image)
        kept, _ = post_process_boxes(boxes, scores, min_size=8, iou_threshold=0.5, max_detections=100)
        large = ((targets[:, 2:] - targets[:, :2]) >= 8).all(dim=1)
        recalls.append(proposal_recall(kept, targets[large], iou=0.5))
    assert float(np.mean(recalls)) >= RECALL_FLOOR - 0.05, recalls


def test_proposal_recall_by_hand():
    targets = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    proposals = torch.tensor([[0.0, 0, 10, 12], [50, 50, 60, 60]])  # IoU 100/120 with the first target
    assert proposal_recall(proposals, targets, iou=0.5) == 0.5
    assert proposal_recall(proposals, targets, iou=0.9) == 0.0
    assert proposal_recall(torch.zeros(0, 4), targets) == 0.0


def test_the_hierarchy_holds_every_merge_and_ends_with_the_whole_image():
    image, _ = generated_scene(3, size=64, n_objects=3)
    labels = initial_regions(image, scale=100)
    n = labels.max() + 1
    boxes, level = hierarchical_grouping(image, labels)
    assert len(boxes) == 2 * n - 1  # n segments, n - 1 merges (a connected image ends in one region)
    assert sorted(level.tolist()) == list(range(1, 2 * n))
    np.testing.assert_array_equal(boxes[level == 1][0], [0, 0, 64, 64])
    for label in range(n):  # the initial boxes are the segments' bounding boxes, brute force
        rows, cols = np.nonzero(labels == label)
        np.testing.assert_array_equal(boxes[label], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_selective_search_ranks_without_ties_and_removes_duplicates():
    image, _ = generated_scene(1)
    boxes, scores = selective_search(image, scales=(100, 300))
    assert len({tuple(b) for b in boxes.tolist()}) == len(boxes)
    assert (scores[:-1] > scores[1:]).all() and scores[0] == 1.0
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0, 128, 128]))  # the top of the hierarchy


def test_selective_search_module_undoes_the_normalisation_and_is_deterministic():
    image, _ = generated_scene(2, size=64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(image).float().permute(2, 0, 1)  # (3, H, W)
    normalised = ((pixels - mean[:, None, None]) / std[:, None, None])[None]
    [(boxes, scores)] = SelectiveSearch((100.0,))(normalised)
    direct_boxes, direct_scores = selective_search(pixels, scales=(100.0,))
    torch.testing.assert_close(boxes, direct_boxes)
    torch.testing.assert_close(scores, direct_scores)


def test_selective_search_rejects_unnormalised_input():
    with pytest.raises(ValueError, match=r"\[0, 1\].*ImageNet normalisation"):
        selective_search(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        selective_search(torch.zeros(1, 3, 8, 8))


def test_post_processing_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=generator) * 200
    sizes = torch.rand(300, 2, generator=generator) * 60 + 5
    boxes = torch.cat([corners, corners + sizes], dim=1)  # (300, 4)
    scores = torch.rand(300, generator=generator)
    kept_boxes, kept_scores = post_process_boxes(boxes, scores, min_size=25, iou_threshold=0.3, max_detections=20)
    large = [i for i in range(300) if sizes[i].min() >= 25]
    expected = [large[i] for i in greedy_nms(boxes[large], scores[large], 0.3)][:20]
    torch.testing.assert_close(kept_boxes, boxes[expected])
    torch.testing.assert_close(kept_scores, scores[expected])
    assert len(kept_boxes) == 20 and (kept_scores[:-1] >= kept_scores[1:]).all()


def test_post_processing_of_nothing_is_nothing():
    boxes, scores = post_process_boxes(torch.zeros(0, 4), torch.zeros(0))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, scores = post_process_boxes(torch.tensor([[0.0, 0, 10, 10]]), torch.ones(1), min_size=25)
    assert boxes.shape == (0, 4)
    with pytest.raises(ValueError, match=r"boxes \(N, 4\)"):
        post_process_boxes(torch.zeros(3, 5), torch.zeros(3))


def test_detector_without_weights_names_the_offline_method(monkeypatch, tmp_path):
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.__class__, "get_state_dict", offline)
    with pytest.raises(ProposalWeightsError, match=r'proposals="selective_search"'):
        DetectorProposals("rpn")(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ProposalWeightsError, match="no Faster R-CNN weights file"):
        DetectorProposals("rcnn", weights=tmp_path / "missing.pth")(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="'rcnn' or 'rpn'"):
        DetectorProposals("selective_search")
