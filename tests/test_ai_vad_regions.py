"""AI-VAD's whole-object regions, pose and ablation table, checked against independent references: a brute-force
flood fill for the connected components of the background path, the drawn object's box for a silhouette's box,
hand-computed moments and extremal points of a hand-made silhouette, scikit-learn's AUROC for the per-kind ×
per-attribute table, and the offline errors of the reference's pretrained paths (never a download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adlearn.components.foreground_regions import (
    ForegroundDetector,
    RegionExtractor,
    background_difference,
    clean_mask,
    median_background,
)
from adlearn.components.region_attributes import KeypointPose, shape_pose, velocity_histogram

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def flood_fill_boxes(mask: np.ndarray) -> list[list[int]]:
    """Brute force: 8-connected components by a stack-based flood fill → sorted boxes x1, y1, x2, y2."""
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, ys, xs = [(y0, x0)], [], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        stack.append((v, u))
        boxes.append([min(xs), min(ys), max(xs) + 1, max(ys) + 1])
    return sorted(boxes)


def scene(size=(48, 64), seed=0) -> np.ndarray:
    """A textured background (H, W, 3) float32 in [0.3, 0.7]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.3, 0.7, (size[0] // 8, size[1] // 8, 3)).astype(np.float32)
    return np.kron(coarse, np.ones((8, 8, 1), np.float32))


def as_frames(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def test_median_background_ignores_objects_that_move_through():
    background = scene()
    frames = []
    for t in range(9):  # a dark square crossing the scene: on each pixel in fewer than half the frames
        frame = background.copy()
        frame[10:20, 4 + 6 * t : 14 + 6 * t] = 0.05
        frames.append(frame)
    np.testing.assert_array_equal(median_background(np.stack(frames)), background)


def test_background_difference_corrects_the_gain_and_finds_the_object():
    background = scene()
    frame = background * 1.04  # the exposure drifted by 4 %
    frame[20:30, 30:40] = 0.95
    changed = background_difference(frame[None], background, binary_threshold=18)[0]
    expected = np.zeros(background.shape[:2], bool)
    expected[20:30, 30:40] = True
    assert torch.equal(changed, torch.from_numpy(expected))


def test_clean_mask_drops_specks_and_joins_an_objects_parts():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[5, 5] = True  # a speck of noise
    mask[10:30, 10:15] = True  # two legs two pixels apart
    mask[10:30, 17:22] = True
    cleaned = clean_mask(mask, 3)
    assert not cleaned[5, 5]
    assert flood_fill_boxes(cleaned.numpy()) == [[10, 10, 22, 30]]  # one object, the legs' box
    assert torch.equal(clean_mask(mask, 1), mask)


def test_background_regions_match_a_brute_force_flood_fill_and_the_drawn_boxes():
    background = scene(seed=1)
    training = []
    for t in range(7):  # training frames: a walker-sized square crosses the scene
        frame = background.copy()
        frame[30:44, 2 + 9 * t : 8 + 9 * t] = 0.9
        training.append(frame)
    test = background.copy()
    test[5:25, 8:14] = 0.95  # a tall object, drawn at x 8..14, y 5..25
    test[30:36, 30:58] = 0.05  # a long flat one (a crawler's box), x 30..58, y 30..36
    test[40, 20] = 0.95  # a speck: dropped by the opening
    extractor = RegionExtractor(foreground="background", min_bbox_area=10, foreground_kernel_size=1)
    extractor.foreground.fit(as_frames(training))
    np.testing.assert_allclose(extractor.foreground.background.numpy(), background, atol=1e-6)
    frames = as_frames([test])
    moving = extractor.foreground(frames, frames)[0]
    regions = extractor(frames, frames)[0]
    brute = flood_fill_boxes(moving.numpy())
    assert sorted(regions["boxes"].long().tolist()) == brute == [[8, 5, 14, 25], [30, 30, 58, 36]]
    for mask, (x1, y1, x2, y2) in zip(regions["masks"], regions["boxes"].long().tolist()):
        assert mask[y1:y2, x1:x2].all() and mask.sum() == (x2 - x1) * (y2 - y1)  # the whole silhouette


def test_background_detector_needs_fit_and_the_training_size():
    detector = ForegroundDetector("background")
    with pytest.raises(RuntimeError, match="not fitted.*fit"):
        detector(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="needs training frames"):
        detector.fit()
    detector.fit(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="fitted on 16x16 frames"):
        detector(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="difference, background, mog2"):
        ForegroundDetector("median")


def test_background_keeps_at_most_max_frames_evenly_spaced():
    detector = ForegroundDetector("background", kernel_size=1, max_background_frames=4)
    frames = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 3, 2, 2) / 10
    detector.update(frames)
    kept = [float(f[0, 0, 0]) * 10 for f in detector._training_frames]
    assert kept == pytest.approx([0, 4, 8])  # every 4th frame once more than 4 were kept twice
    detector.fit()
    assert detector.background[0, 0, 0].item() == pytest.approx(0.4)


# ---------------------------------------------------------------------------- pose on a hand-made silhouette
def test_shape_pose_of_a_crawler_silhouette_by_hand():
    """An L-shaped silhouette: a 12x2 body on a 2x4 leg at its left end (a crawler seen from the side)."""
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 10:12, 4:16] = True  # body: x 4..16, y 10..12 (24 px)
    mask[0, 12:16, 4:6] = True  # leg: x 4..6, y 12..16 (8 px)
    box = torch.tensor([[4.0, 10.0, 16.0, 16.0]])  # 12 wide, 6 tall
    pose = shape_pose(mask, box).view(17, 2)
    ys, xs = np.nonzero(mask[0].numpy())
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres: (280 / 32, 376 / 32)
    assert (cx, cy) == pytest.approx((8.75, 11.75))
    assert pose[0].tolist() == pytest.approx([(cx - 4) / 12, (cy - 10) / 6])
    # direction 0° (right): the body's right end, the pixel centres x = 15.5 at y 10.5 and 11.5
    assert pose[1].tolist() == pytest.approx([(15.5 - 4) / 12, (11.0 - 10) / 6])
    # direction 90° (down): the leg's foot, x 4.5 and 5.5 at y 15.5
    assert pose[3].tolist() == pytest.approx([(5.0 - 4) / 12, (15.5 - 10) / 6])
    # the major axis is nearly horizontal: its two ends differ mostly in x
    major = pose[9] - pose[10]
    assert abs(major[0] * 12) > 3 * abs(major[1] * 6)
    # a standing walker's silhouette (the same L turned upright) differs clearly
    upright = shape_pose(mask.transpose(1, 2), torch.tensor([[10.0, 4.0, 16.0, 16.0]])).view(17, 2)
    assert (upright - pose).abs().max() > 0.3


def test_velocity_on_the_silhouette_ignores_the_background_in_the_box():
    flow = torch.zeros(1, 2, 20, 20)
    flow[0, 0, 5:15, 8:12] = 4.0  # the object (x 8..12) moves 4 px right; the rest of its box stands still
    boxes = torch.tensor([[0, 4.0, 5.0, 16.0, 15.0]])
    masks = torch.zeros(1, 20, 20)
    masks[0, 5:15, 8:12] = 1
    assert velocity_histogram(flow, boxes, n_bins=1, output_size=12).item() == pytest.approx(4.0 * 4 / 12, abs=0.1)
    on_mask = velocity_histogram(flow, boxes, n_bins=1, output_size=12, masks=masks.bool())
    # the silhouette's speed, up to the bilinear samples that straddle its edge (half object, half background)
    assert on_mask.item() == pytest.approx(4.0, abs=0.6)
    with pytest.raises(ValueError, match=r"masks must be \(M, H, W\)"):
        velocity_histogram(flow, boxes, masks=masks[:, :10])


# ---------------------------------------------------------------------------- the reference's pretrained paths
def test_keypoint_pose_offline_errors_name_the_silhouette_default(tmp_path, monkeypatch):
    import torch.hub

    def no_download(*args, **kwargs):  # never touch the network: a download is refused as offline
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(RuntimeError, match=r"Keypoint R-CNN.*pose_weights=PATH.*pose_method='silhouette'"):
        KeypointPose()
    with pytest.raises(FileNotFoundError, match=r"pose_weights=.*not a file.*pose_method='silhouette'"):
        KeypointPose(str(tmp_path / "missing.pth"))
    from adlearn.models import create

    with pytest.raises(RuntimeError, match="pose_method='silhouette'"):
        create("ai_vad", pose_method="keypoints", device="cpu")
    with pytest.raises(ValueError, match="'silhouette' or 'keypoints'"):
        create("ai_vad", pose_method="skeleton", device="cpu")


def test_keypoint_pose_runs_the_keypoint_head_on_the_given_boxes():
    """With a random (untrained) Keypoint R-CNN: one 34-vector per box, in the boxes' order, normalised to
    the box (every keypoint lies inside its box: the heat map covers the box)."""
    from torch import nn
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    torch.manual_seed(0)
    pose = KeypointPose.__new__(KeypointPose)
    nn.Module.__init__(pose)
    pose.network = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=64, max_size=96).eval()
    frames = torch.rand(2, 3, 48, 64)
    boxes = torch.tensor([[1, 10.0, 5.0, 30.0, 40.0], [0, 2.0, 2.0, 20.0, 20.0], [1, 40.0, 10.0, 60.0, 30.0]])
    features = pose(frames, boxes)
    assert features.shape == (3, 34)
    assert features.min() >= -0.05 and features.max() <= 1.05
    alone = pose(frames[1:], torch.tensor([[0, 40.0, 10.0, 60.0, 30.0]]))
    assert torch.allclose(alone[0], features[2], atol=1e-4)
    assert pose(frames, torch.zeros(0, 5)).shape == (0, 34)


# ---------------------------------------------------------------------------- the ablation table
def test_frame_auroc_table_matches_sklearn_per_kind_and_attribute():
    from adlearn.metrics import frame_auroc_table

    rng = np.random.default_rng(0)
    kinds = np.array([""] * 40 + ["velocity"] * 10 + ["pose"] * 10)
    labels = (kinds != "").astype(int)
    scores = {"velocity only": rng.random(60) + (kinds == "velocity"), "pose only": rng.random(60)}
    table = frame_auroc_table(labels, kinds, scores)
    assert set(table) == {"velocity only", "pose only"}
    assert set(table["velocity only"]) == {"all", "velocity", "pose"}
    chosen = kinds != "pose"
    expected = roc_auc_score(labels[chosen], scores["velocity only"][chosen])
    assert table["velocity only"]["velocity"] == pytest.approx(expected) and expected == 1.0
    assert table["pose only"]["all"] == pytest.approx(roc_auc_score(labels, scores["pose only"]))


# ---------------------------------------------------------------------------- the model with the new options


def test_background_model_saves_loads_and_reseeds_identically(tiny_videos, tmp_path):
    from adlearn.models import create, load

    options = dict(min_bbox_area=10, deep_crop_size=32, foreground="background", velocity_on_mask=True)
    model = create("ai_vad", device="cpu", **options).fit(tiny_videos[0])
    assert model.foreground.background.shape == (64, 80, 3)
    clips = torch.stack([tiny_videos[1][i]["frames"] for i in range(0, len(tiny_videos[1]), 4)])
    first = model.predict(clips)
    assert first.pred_score.max() > 0  # regions were found
    restored = load(model.save(tmp_path / "ai_vad.pt"))
    assert torch.equal(restored.foreground.background, model.foreground.background)
    again = restored.predict(clips)
    assert torch.equal(first.pred_score, again.pred_score) and torch.equal(first.anomaly_map, again.anomaly_map)
    refit = create("ai_vad", device="cpu", **options).fit(tiny_videos[0])
    assert torch.equal(refit.predict(clips).pred_score, first.pred_score)


def test_the_cpu_preset_uses_whole_silhouettes():
    from adlearn.options import resolve_options

    options = resolve_options("ai_vad", "cpu", {})
    assert options["foreground"] == "background" and options["velocity_on_mask"] is True
    assert options["pose_method"] == "silhouette" and options["region_detector"] == "foreground"
