"""AI-VAD and its components, checked against independent references: a known shift for the optical flow,
SciPy's labelling for the regions, NumPy histograms for the velocity attribute, hand-computed moments for
the shape pose, a brute-force leave-one-group-out search for the grouped kNN, and the model's frame score
rebuilt from its parts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.ops import roi_align
from video_fixtures import TINY_VIDEO  # tests/video_fixtures.py

from adlearn.components.foreground_regions import (
    ForegroundDetector,
    RegionExtractor,
    connected_regions,
    filter_regions,
    foreground_mask,
)
from adlearn.components.grouped_knn import GroupedKNN
from adlearn.components.optical_flow import OpticalFlow
from adlearn.components.region_attributes import RoiDeepFeatures, shape_pose, velocity_histogram

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def textured(size=(64, 80), seed=0) -> torch.Tensor:
    """A smooth random RGB texture (3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size[0] // 6, size[1] // 6, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


# ---------------------------------------------------------------------------- optical flow
@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_flow_recovers_a_known_shift(method):
    image = textured((72, 96))
    shifted = torch.roll(image, shifts=(2, 3), dims=(1, 2))  # content moves 3 px right, 2 px down
    flow = OpticalFlow(method)(image[None], shifted[None])  # (1, 2, H, W)
    assert flow.shape == (1, 2, 72, 96)
    interior = flow[0, :, 16:-16, 16:-16]
    assert interior[0].median() == pytest.approx(3.0, abs=0.3)
    assert interior[1].median() == pytest.approx(2.0, abs=0.3)


def test_flow_names_the_expected_shape_and_methods():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        OpticalFlow()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="farneback, dis, raft"):
        OpticalFlow("lucas")


# ---------------------------------------------------------------------------- regions
def test_foreground_is_what_changed_and_components_match_scipy():
    first = torch.full((1, 3, 40, 50), 0.5)
    last = first.clone()
    last[0, :, 5:12, 6:10] = 0.9  # two objects appear
    last[0, :, 20:30, 30:45] = 0.1
    moving = foreground_mask(first, last, kernel_size=1, binary_threshold=18)[0]
    assert torch.equal(moving, (last[0] != first[0]).any(0))
    regions = connected_regions(moving)
    labelled, _ = ndimage.label(moving.numpy(), structure=np.ones((3, 3)))
    expected = sorted([s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labelled))
    assert sorted(regions["boxes"].long().tolist()) == expected
    assert regions["masks"].sum().item() == moving.sum().item() and regions["scores"].eq(0.5).all()


def test_filter_drops_small_boxes_and_boxes_mostly_inside_larger_ones():
    boxes = torch.tensor([[0, 0, 20, 20], [2, 2, 12, 12], [15, 15, 30, 30], [40, 40, 45, 45.0]])
    regions = {"boxes": boxes, "scores": torch.ones(4), "labels": torch.zeros(4, dtype=torch.long)}
    kept = filter_regions(regions, min_bbox_area=25, max_bbox_overlap=0.65)
    # box 3 (area 25) is not above 25; box 1 lies inside box 0 (overlap 1.0); box 2 overlaps box 0 by 25/225
    assert kept["boxes"].tolist() == [[0, 0, 20, 20], [15, 15, 30, 30]]


def test_mog2_keeps_a_background_per_video_and_finds_a_new_object():
    background = textured((48, 48))[None]
    moved = background.clone()
    moved[0, :, 10:30, 10:20] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    detector = ForegroundDetector("mog2", kernel_size=3)
    for _ in range(5):
        assert not detector(background, background, ["a"]).any()
    found = detector(background, moved, ["a"])[0]
    assert found[12:28, 12:18].all() and not found[35:, 35:].any()
    assert set(detector._models) == {"a"}


def test_region_extractor_offline_path_and_clear_errors():
    first = torch.full((2, 3, 40, 50), 0.5)
    last = first.clone()
    last[1, :, 10:25, 10:25] = 0.9
    regions = RegionExtractor(min_bbox_area=100)(first, last)
    assert [len(r["boxes"]) for r in regions] == [0, 1] and regions[1]["boxes"][0].tolist() == [9, 9, 26, 26]
    with pytest.raises(ValueError, match="'foreground' or 'maskrcnn'"):
        RegionExtractor(detector="yolo")


# ---------------------------------------------------------------------------- attributes
def test_velocity_histogram_is_the_mean_speed_per_direction_bin():
    generator = torch.Generator().manual_seed(1)
    flow = torch.randn(2, 2, 30, 40, generator=generator) * 3
    boxes = torch.tensor([[0, 2.0, 3.0, 30.0, 25.0], [1, 0.0, 0.0, 40.0, 30.0]])
    result = velocity_histogram(flow, boxes, n_bins=8, output_size=16)
    crops = roi_align(flow, boxes, output_size=16, aligned=False).numpy()
    for m in range(2):
        dx, dy = crops[m, 0].ravel(), crops[m, 1].ravel()
        speed, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
        sums, _ = np.histogram(angle, bins=8, range=(-math.pi, math.pi), weights=speed)
        counts, _ = np.histogram(angle, bins=8, range=(-math.pi, math.pi))
        expected = np.where(counts > 0, sums / np.maximum(counts, 1), 0)
        np.testing.assert_allclose(result[m].numpy(), expected, rtol=1e-5, atol=1e-6)
    # one bin: the mean speed in the box; a uniform motion fills only its own direction's bin
    uniform = torch.zeros(1, 2, 20, 20)
    uniform[:, 0] = 3.0  # straight right: angle 0 -> bin 4 of 8 ([0, π/4))
    one_box = torch.tensor([[0, 0.0, 0.0, 20.0, 20.0]])
    assert velocity_histogram(uniform, one_box, n_bins=1).item() == pytest.approx(3.0)
    assert velocity_histogram(uniform, one_box, n_bins=8)[0].tolist() == [0, 0, 0, 0, 3.0, 0, 0, 0]


def test_shape_pose_of_a_filled_rectangle_by_hand():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 10:30, 5:15] = True  # 10 wide, 20 tall
    pose = shape_pose(mask, torch.tensor([[5.0, 10.0, 15.0, 30.0]])).view(17, 2)
    assert pose.shape == (17, 2)
    assert pose[0].tolist() == pytest.approx([0.5, 0.5])  # the centroid
    assert pose[1].tolist() == pytest.approx([0.95, 0.5])  # the right edge's pixel centres: x (14.5 - 5) / 10
    # major axis: vertical, σ_y = sqrt((20² - 1) / 12) px -> ±σ_y / 20 around the centre
    sigma_y, sigma_x = math.sqrt((20**2 - 1) / 12) / 20, math.sqrt((10**2 - 1) / 12) / 10
    assert sorted(pose[9:11, 1].tolist()) == pytest.approx([0.5 - sigma_y, 0.5 + sigma_y], abs=1e-5)
    assert sorted(pose[11:13, 0].tolist()) == pytest.approx([0.5 - sigma_x, 0.5 + sigma_x], abs=1e-5)
    # the pose is normalised to the box: the same shape twice as large, elsewhere, gives nearly the same numbers
    large = torch.zeros(1, 80, 80, dtype=torch.bool)
    large[0, 30:70, 40:60] = True
    large_pose = shape_pose(large, torch.tensor([[40.0, 30.0, 60.0, 70.0]])).view(17, 2)
    assert torch.allclose(large_pose, pose, atol=0.03)
    # lying down (the rectangle turned) differs clearly
    lying = shape_pose(mask.transpose(1, 2), torch.tensor([[10.0, 5.0, 30.0, 15.0]])).view(17, 2)
    assert (lying - pose).abs().max() > 0.1


def test_roi_deep_features_follow_the_object_not_its_place():
    encoder = RoiDeepFeatures("efficientnet_lite0", crop_size=32)
    frame = torch.full((1, 3, 64, 64), 0.5)
    patch = textured((16, 16), seed=3)
    frame[0, :, 4:20, 8:24] = patch
    frame[0, :, 40:56, 30:46] = patch
    boxes = torch.tensor([[0, 8.0, 4.0, 24.0, 20.0], [0, 30.0, 40.0, 46.0, 56.0], [0, 0.0, 24.0, 16.0, 40.0]])
    features = encoder(frame, boxes)
    assert features.shape == (3, encoder.output_dim) == (3, 320)
    assert torch.allclose(features[0], features[1], atol=1e-5)
    assert not torch.allclose(features[0], features[2], atol=1e-2)


# ---------------------------------------------------------------------------- grouped kNN
def test_grouped_knn_excludes_the_own_group_and_normalises_leave_one_group_out():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(30, 4, generator=generator)
    groups = torch.arange(30) % 3
    knn = GroupedKNN(n_neighbors=2).fit(features, groups)
    distances = torch.cdist(features.double(), features.double())  # brute force
    raw = []
    for i in range(30):
        others = distances[i][groups != groups[i]]
        raw.append(others.sort().values[:2].mean())
    raw = torch.stack(raw)
    assert knn.score_min.item() == pytest.approx(raw.min().item(), rel=1e-5)
    assert knn.score_max.item() == pytest.approx(raw.max().item(), rel=1e-5)
    queries = torch.randn(5, 4, generator=generator)
    expected = torch.cdist(queries.double(), features.double()).sort(dim=1).values[:, :2].mean(1)
    got = knn.score(queries, normalize=False)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    normalised = knn.score(queries)
    assert torch.allclose(normalised, (got - knn.score_min) / (knn.score_max - knn.score_min))
    restored = GroupedKNN(n_neighbors=2)
    restored.load_state_dict(knn.state_dict())
    assert torch.equal(restored.score(queries), normalised)


def test_grouped_knn_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 2 groups"):
        GroupedKNN().fit(torch.randn(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="lower n_neighbors"):
        GroupedKNN(n_neighbors=4).fit(torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 1]))
    with pytest.raises(RuntimeError, match="not fitted"):
        GroupedKNN().score(torch.randn(2, 2))


# ---------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def fitted(tiny_videos):
    from adlearn.models import create

    return create("ai_vad", device="cpu", **TINY_VIDEO).fit(tiny_videos[0])


def test_the_frame_score_is_rebuilt_from_the_streams(fitted, tiny_videos):
    from adlearn.models.ai_vad import ai_vad_anomaly_map

    clips = torch.stack([tiny_videos[1][i]["frames"] for i in range(0, len(tiny_videos[1]), 3)])
    parts = fitted.predict_regions(clips)
    prediction = fitted.predict(clips)
    assert sum(len(p["boxes"]) for p in parts) > 0
    for p, score in zip(parts, prediction.pred_score):
        assert set(p["stream_scores"]) == {"velocity", "pose", "deep"}
        if len(p["boxes"]):
            rebuilt = sum(p["stream_scores"][s].max() for s in ("velocity", "pose", "deep"))
            regions = sum(p["stream_scores"][s] for s in ("velocity", "pose", "deep"))
            assert torch.allclose(p["region_scores"], regions)
        else:
            rebuilt = 0.0
        assert score.item() == pytest.approx(float(rebuilt), abs=1e-6)
    maps = ai_vad_anomaly_map([p["boxes"] for p in parts], [p["region_scores"] for p in parts], clips.shape[-2:])
    assert torch.equal(prediction.anomaly_map, maps)


def test_the_anomaly_map_paints_each_box_with_its_score_by_hand():
    from adlearn.models.ai_vad import ai_vad_anomaly_map

    boxes = [torch.tensor([[1.0, 1.0, 4.0, 3.0], [2.0, 0.0, 5.0, 2.0]]), torch.zeros(0, 4)]
    maps = ai_vad_anomaly_map(boxes, [torch.tensor([0.5, 2.0]), torch.zeros(0)], (4, 6))
    expected = torch.zeros(2, 4, 6)
    expected[0, 1:3, 1:4] = 0.5
    expected[0, 0:2, 2:5] = 2.0  # the higher score wins where boxes overlap
    assert torch.equal(maps, expected)


def test_save_load_and_seed_give_identical_scores(fitted, tiny_videos, tmp_path):
    from adlearn.models import create, load

    clips = torch.stack([tiny_videos[1][i]["frames"] for i in range(0, len(tiny_videos[1]), 4)])
    restored = load(fitted.save(tmp_path / "ai_vad.pt"))
    first = fitted.predict(clips)
    again = restored.predict(clips)
    assert torch.equal(first.pred_score, again.pred_score) and torch.equal(first.anomaly_map, again.anomaly_map)
    refit = create("ai_vad", device="cpu", **TINY_VIDEO).fit(tiny_videos[0])
    assert torch.equal(refit.predict(clips).pred_score, first.pred_score)


def test_each_stream_can_be_switched_off_alone(tiny_videos):
    from adlearn.models import create

    clips = tiny_videos[1][5]["frames"][None]
    for stream in ("velocity", "pose", "deep"):
        options = {f"use_{s}": s == stream for s in ("velocity", "pose", "deep")}
        model = create("ai_vad", device="cpu", **TINY_VIDEO, **options).fit(tiny_videos[0])
        assert model.streams == [stream]
        assert set(model.predict_regions(clips)[0]["stream_scores"]) == {stream}


def test_clear_errors(fitted, tiny_videos):
    from adlearn.models import NotFittedError, create

    with pytest.raises(ValueError, match="at least one stream"):
        create("ai_vad", use_velocity=False, use_pose=False, use_deep=False)
    with pytest.raises(NotFittedError, match=r"call model\.fit"):
        create("ai_vad", device="cpu", **TINY_VIDEO).predict(torch.zeros(1, 2, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\).*3 channels"):
        fitted.predict(torch.zeros(1, 2, 1, 64, 80))
    with pytest.raises(ValueError, match="fitted on 64x80 frames"):
        fitted.predict(torch.zeros(1, 2, 3, 32, 40))
    still = [{"frames": torch.full((2, 3, 32, 32), 0.5), "video": f"v{i}"} for i in range(3)]
    with pytest.raises(ValueError, match="no region.*foreground_binary_threshold"):
        create("ai_vad", device="cpu", use_deep=False).fit(still)
    one_moves = [*still[:2], {"frames": torch.stack([still[0]["frames"][0], torch.rand(3, 32, 32)]), "video": "v9"}]
    with pytest.raises(ValueError, match="only 1 training video.*at least 2 videos"):
        create("ai_vad", device="cpu", use_deep=False, min_bbox_area=10).fit(one_moves)


def test_evaluate_gives_every_frame_the_score_of_the_clip_ending_on_it(fitted, tiny_videos):
    from sklearn.metrics import roc_auc_score

    from adlearn.evaluate import evaluate

    test = tiny_videos[1]
    results = evaluate(fitted, test, return_predictions=True)
    predictions = results["predictions"]
    n_frames = sum(video.n_frames for video in test.videos)
    assert results["n_test"] == len(predictions["pred_scores"]) == n_frames and results["input_kind"] == "video"
    first = test.videos[0].name
    clip_scores = [
        float(p["frame_score"]) for p in fitted.predict_regions(torch.stack([test[i]["frames"] for i in (0, 1)]))
    ]
    in_first = [v == first for v in predictions["videos"]]
    assert predictions["frame_indices"][in_first][:3].tolist() == [0, 1, 2]
    # frame 0 ends no clip: it takes clip 0's score; frame 1 ends clip 0, frame 2 ends clip 1
    assert predictions["pred_scores"][in_first][:3] == pytest.approx([clip_scores[0], clip_scores[0], clip_scores[1]])
    labels, scores = predictions["labels"], predictions["pred_scores"]
    assert results["frame_auroc_micro"] == results["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    kinds = {kind for kind in predictions["kinds"] if kind}
    assert kinds and all(f"frame_auroc_{kind}" in results for kind in kinds)
    assert 0 <= results["region_auroc"] <= 1 and 0 <= results["pixel_auroc"] <= 1


def test_the_benchmark_table_has_a_video_section():
    from adlearn.reports import markdown_table

    base = {"status": "ok", "fit_seconds": 10.0, "fit_cpu_seconds": 8.0, "images_per_second": 5.0}
    rows = [
        {**base, "model": "padim", "category": "bottle", "seed": 0, "image_auroc": 0.99, "pixel_auroc": 0.98},
        {
            **base,
            "model": "ai_vad",
            "category": "surveillance",
            "seed": 0,
            "image_auroc": 0.91,
            "frame_auroc_micro": 0.91,
            "frame_auroc_macro": 0.87,
            "region_auroc": 0.8,
            "frame_auroc_velocity": 0.97,
            "frame_auroc_pose": 0.85,
            "frame_auroc_appearance": 0.9,
        },
    ]
    table = markdown_table(rows)
    video = table[table.index("Video models") :]
    assert "| ai_vad | surveillance | 1 | 0.910 | 0.870 | 0.800 | 0.970 | 0.850 | 0.900 | 8.0 | 5.0 |" in video
    assert "padim" not in video


def test_cli_evaluates_a_video_model_on_a_ucsd_folder(tmp_path, capsys):
    import json

    from video_fixtures import write_ucsd_folder  # tests/video_fixtures.py

    from adlearn.cli import main

    root = write_ucsd_folder(tmp_path / "data", n_train=3, n_test=2, n_frames=12)
    argv = ["evaluate", "ai_vad", "--root", str(root), "--device", "cpu", "--set", "min_bbox_area=10"]
    argv += ["--set", "deep_crop_size=32", "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "f.png")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["input_kind"] == "video" and results["category"].startswith("UCSD Ped2")
    assert results["n_test"] == 24 and 0.0 <= results["frame_auroc_micro"] <= 1.0
    assert (tmp_path / "f.png").exists() and "ai_vad" in capsys.readouterr().out
