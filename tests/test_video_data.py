"""The video data layer: clip indexing, the readers, the synthetic surveillance videos and their ground
truth, the public layouts, the errors and the download scripts."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from video_fixtures import write_avenue_folder, write_ucsd_folder, write_video_file

from adlearn.data import ClipDataset, DataError, Video, avenue, resize_clip, synthetic_surveillance, ucsd_ped2
from adlearn.data.download import sha256_file
from adlearn.data.synthetic_video import (
    EVENT_ORDER,
    EVENTS,
    actor_shapes,
    background,
    generate_videos,
    plan_video,
    render_video,
)

SMALL = (64, 80)  # (H, W) of the small test videos


def random_video(name: str, n_frames: int, size=(6, 7), seed: int = 0, with_masks: bool = True) -> Video:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, *size, 3), dtype=np.uint8)
    masks = (rng.random((n_frames, *size)) < 0.1).astype(np.uint8) if with_masks else None
    return Video.from_arrays(name, frames, masks=masks)


@pytest.fixture(scope="module")
def small_test_split():
    return generate_videos("test", 0, len(EVENT_ORDER), 24, SMALL)


# =========================================================================== clips
@pytest.mark.parametrize("clip_length,step", [(1, 1), (2, 1), (3, 2), (5, 5), (4, 3)])
def test_clip_index_matches_brute_force(clip_length, step):
    lengths = [5, 9, 12, 4, 7]
    videos = [random_video(f"v{i}", n, seed=i) for i, n in enumerate(lengths) if n >= clip_length]
    ds = ClipDataset(videos, clip_length=clip_length, frames_between_clips=step)
    expected = []  # every (video, start) whose clip fits, keeping starts that are multiples of step
    for v, video in enumerate(videos):
        for start in range(video.n_frames):
            if start % step == 0 and start + clip_length <= video.n_frames:
                expected.append((v, start))
    assert ds.clip_index == expected and len(ds) == len(expected)


def test_clip_items_hold_the_video_frames_labels_and_masks():
    video = random_video("walk", 9, seed=3)
    ds = ClipDataset([video], clip_length=3, frames_between_clips=2)
    for k, (_, start) in enumerate(ds.clip_index):
        item = ds[k]
        assert item["frames"].shape == (3, 3, 6, 7) and item["frames"].dtype == torch.float32
        for t in range(3):
            expected = torch.from_numpy(video.frame(start + t)).permute(2, 0, 1).float() / 255
            assert torch.equal(item["frames"][t], expected)
            assert torch.equal(item["masks"][t], torch.from_numpy(video.mask(start + t)).float())
        assert item["frame_indices"].tolist() == [start, start + 1, start + 2]
        labels = [int(video.mask(i).any()) for i in range(start, start + 3)]  # labels come from the masks
        assert item["frame_labels"].tolist() == labels and item["frame_labels"].dtype == torch.int64
        assert item["label"] == max(labels) and item["has_masks"] is True and item["video"] == "walk"


def test_videos_without_masks_give_zero_masks_and_normal_labels():
    video = random_video("plain", 4, with_masks=False)
    item = ClipDataset([video])[0]
    assert not item["has_masks"] and item["masks"].sum() == 0 and item["label"] == 0
    assert video.kinds == [""] * 4


def test_clips_collate_into_batches():
    ds = ClipDataset([random_video("a", 5), random_video("b", 6, seed=1)], clip_length=2)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["frames"].shape == (4, 2, 3, 6, 7) and batch["frame_labels"].shape == (4, 2)
    assert batch["video"] == ["a"] * 4 and batch["label"].shape == (4,)


def test_resize_clip_resizes_frames_and_masks_together():
    ds = ClipDataset([random_video("a", 3, size=(8, 8))], transform=resize_clip((16, 12)))
    item = ds[0]
    assert item["frames"].shape == (2, 3, 16, 12) and item["masks"].shape == (2, 16, 12)
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}  # nearest neighbour keeps masks binary


# =========================================================================== synthetic videos
def test_synthetic_videos_are_deterministic_per_seed():
    a = generate_videos("test", 0, 2, 10, SMALL)
    b = generate_videos("test", 0, 2, 10, SMALL)
    c = generate_videos("test", 1, 2, 10, SMALL)
    for x, y in zip(a, b):
        assert np.array_equal(x["frames"], y["frames"]) and np.array_equal(x["masks"], y["masks"])
    assert not np.array_equal(a[0]["frames"], c[0]["frames"])
    more = generate_videos("test", 0, 3, 10, SMALL)  # asking for more videos keeps the first ones
    assert np.array_equal(more[1]["frames"], a[1]["frames"])


def test_cached_copy_equals_a_fresh_render(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    fresh = synthetic_surveillance("test", n_videos=2, n_frames=10, size=SMALL, cache=False)
    cached = synthetic_surveillance("test", n_videos=2, n_frames=10, size=SMALL)
    again = synthetic_surveillance("test", n_videos=2, n_frames=10, size=SMALL)  # read back from the cache
    assert len(list(tmp_path.iterdir())) == 1
    (final,) = tmp_path.iterdir()
    abandoned = final.with_name(f"{final.name}.tmp-999999999-dead")  # left by a killed process
    abandoned.mkdir()
    shutil.rmtree(final)
    synthetic_surveillance("test", n_videos=2, n_frames=10, size=SMALL)  # rebuilt; the leftover cleared
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    for x, y, z in zip(fresh, cached, again):
        assert x.name == y.name == z.name and x.kinds == z.kinds
        assert np.array_equal(x.frame_labels, z.frame_labels)
        for i in range(x.n_frames):
            assert np.array_equal(x.frame(i), z.frame(i)) and np.array_equal(x.mask(i), z.mask(i))


def test_training_videos_are_normal_and_test_videos_hold_each_event(small_test_split):
    train = synthetic_surveillance("train", n_videos=2, n_frames=12, size=SMALL, cache=False)
    assert all(v.frame_labels.sum() == 0 and not v.has_masks and set(v.kinds) == {""} for v in train)
    for index, item in enumerate(small_test_split):
        event = EVENT_ORDER[index]
        labels, kinds = item["labels"], np.array(item["kinds"])
        assert item["event"] == event
        assert 0 < labels.sum() < len(labels) and labels[0] == 0  # normal frames before the event
        assert set(kinds[labels == 1]) == {EVENTS[event]} and set(kinds[labels == 0]) == {""}
    assert {EVENTS[e] for e in EVENT_ORDER} == {"velocity", "pose", "appearance"}


def test_masks_are_where_the_anomalous_actor_was_drawn():
    size, n_frames = SMALL, 24
    scene = background(size, 0)
    for index, event in enumerate(EVENT_ORDER):
        plan = plan_video("test", index, 0, n_frames, size)
        frames, masks, labels, _ = render_video(plan, scene)
        without, _, _, _ = render_video(plan, scene, include_anomaly=False)  # same noise, same others
        empty, _, _, _ = render_video(dataclasses.replace(plan, actors=[]), scene)  # the plaza alone
        drawn = np.any(frames != without, axis=-1)  # (N, H, W): every pixel the actor changed
        others = np.any(without != empty, axis=-1)  # (N, H, W): pixels the other figures cover
        # an actor entering the view first covers less than half of the border pixels: not in the mask yet
        inner = np.zeros(size, bool)
        inner[2:-2, 2:-2] = True
        for t in range(n_frames):
            mask = masks[t].astype(bool)
            assert labels[t] == int(mask.any())
            if event != "faller":  # the faller walks normally (drawn, not anomalous) before it falls
                assert mask.any() or not (drawn[t] & inner).any(), (event, t)  # drawn: an anomalous frame
            if mask.any():
                assert drawn[t][mask].mean() > 0.98, (event, t)  # the mask is drawn pixels ...
                # ... up to its anti-aliased edge (one pixel), also where a nearer figure covers the actor
                halo = ndimage.binary_dilation(mask | others[t], structure=np.ones((3, 3), bool))
                assert not (drawn[t] & inner & ~halo).any(), (event, t)


def test_events_move_the_way_their_kind_says():
    """Velocity events are fast, the others go at walking speed: measured on the masks' centroids."""
    speeds = {}
    for index, event in enumerate(EVENT_ORDER):
        plan = plan_video("test", index, 0, 48, (128, 160))
        _, masks, labels, _ = render_video(plan, background((128, 160), 0))
        frames = np.nonzero(labels)[0][2:-2]  # fully entered
        xs = [ndimage.center_of_mass(masks[t])[1] for t in frames]
        speeds[event] = float(np.median(np.abs(np.diff(xs))))
    assert min(speeds["runner"], speeds["cyclist"]) > 2 * max(speeds["car"], speeds["cart"], speeds["crawler"])
    assert speeds["faller"] < 1.0  # lies still once down


def test_walkers_occlude_each_other():
    """Every training video has a moment where two figures overlap (the nearer one drawn over the other)."""
    for index in range(4):
        plan = plan_video("train", index, 0, 60, (128, 160))
        overlapping = False
        for t in range(60):
            boxes = []
            for actor in plan.actors:
                corners = np.array([shape.bbox() for shape in actor_shapes(actor, t, 128)])  # (S, 4)
                boxes.append((*corners[:, :2].min(axis=0), *corners[:, 2:].max(axis=0)))
            for (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) in itertools.combinations(boxes, 2):
                inside = 0 < min(ax1, bx1) and max(ax0, bx0) < 160  # in view
                overlapping |= inside and min(ax1, bx1) - max(ax0, bx0) > 3 and min(ay1, by1) - max(ay0, by0) > 3
        assert overlapping, index
        assert all(actor.event == "walker" for actor in plan.actors)


# =========================================================================== readers
@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_frame_folder_round_trip(tmp_path, suffix):
    frames = np.random.default_rng(0).integers(0, 256, (11, 10, 12, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):  # names sort naturally: 2 before 10
        Image.fromarray(frame).save(tmp_path / f"frame{i}{suffix}")
    video = Video.from_folder(tmp_path)
    assert video.n_frames == 11 and video.size == (10, 12) and video.name == tmp_path.name
    assert all(np.array_equal(video.frame(i), frames[i]) for i in range(11))


def test_grey_frames_become_rgb(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (3, 9, 8), dtype=np.uint8)
    for i, frame in enumerate(grey):
        Image.fromarray(frame).save(tmp_path / f"{i:03d}.tif")
    frame = Video.from_folder(tmp_path).frame(2)
    assert frame.shape == (9, 8, 3) and all(np.array_equal(frame[..., c], grey[2]) for c in range(3))


@pytest.mark.parametrize("suffix,b_frames", [(".mp4", 0), (".avi", 0), (".mp4", 3), (".avi", 2)])
def test_video_file_round_trip_within_codec_tolerance(tmp_path, suffix, b_frames):
    frames = generate_videos("test", 0, 1, 24, SMALL)[0]["frames"].copy()
    for i in range(24):  # frame i carries a white bar 4 + 3 i pixels long: its number, readable after coding
        frames[i, 2:10, : 4 + 3 * i] = 255
    video = Video.from_file(write_video_file(tmp_path / f"clip{suffix}", frames, b_frames=b_frames))
    assert video.n_frames == 24 and video.size == SMALL and video.name == "clip"
    errors = [np.abs(video.frame(i).astype(int) - frames[i]).mean() for i in range(24)]
    assert max(errors) < 8  # lossy codecs: a few grey levels on average
    bars = [int((video.frame(i)[6].min(axis=-1) > 200).sum()) for i in range(24)]
    assert all(abs(bar - (4 + 3 * i)) <= 1 for i, bar in enumerate(bars)), bars  # frame i is frame i
    # a frame read out of order (a seek) is the frame read in order
    sequential = [video.frame(i).copy() for i in range(24)]
    fresh = Video.from_file(tmp_path / f"clip{suffix}")
    for i in (13, 2, 23, 9, 0, 15, 21, 7):
        assert np.array_equal(fresh.frame(i), sequential[i])
    copy = pickle.loads(pickle.dumps(fresh))  # what a DataLoader worker receives: it reopens the file
    assert all(np.array_equal(copy.frame(i), sequential[i]) for i in (5, 6, 1))


# =========================================================================== public layouts
def test_ucsd_layout_reads_frames_labels_and_masks(tmp_path):
    root = write_ucsd_folder(tmp_path, n_train=2, n_test=2, n_frames=12, size=SMALL, grey=False)
    train, test = ucsd_ped2(root, "train"), ucsd_ped2(root / "UCSDped2", "test")  # either root works
    assert [v.name for v in train] == ["Train001", "Train002"] and not any(v.has_masks for v in train)
    truth = generate_videos("test", 0, 2, 12, SMALL)
    for video, item in zip(test, truth):
        assert video.has_masks and np.array_equal(video.frame_labels, item["labels"])
        for i in range(12):
            assert np.array_equal(video.frame(i), item["frames"][i])
            assert np.array_equal(video.mask(i), item["masks"][i])
    assert len(ClipDataset(test, clip_length=2)) == 2 * 11


@pytest.mark.parametrize("mat_masks", [True, False])
def test_avenue_layout_reads_videos_and_masks(tmp_path, mat_masks):
    root = write_avenue_folder(tmp_path, n_train=1, n_test=2, n_frames=10, size=SMALL, mat_masks=mat_masks)
    (train,) = avenue(root, "train")
    assert train.name == "01" and train.n_frames == 10 and not train.has_masks
    truth = generate_videos("test", 0, 2, 10, SMALL)
    for video, item in zip(avenue(root, "test"), truth):
        assert video.has_masks and np.array_equal(video.frame_labels, item["labels"])
        assert all(np.array_equal(video.mask(i), item["masks"][i]) for i in range(10))


# =========================================================================== errors
def test_folder_without_frames_says_what_to_put_there(tmp_path):
    (tmp_path / "notes.txt").write_text("no frames here")
    with pytest.raises(DataError, match="no frames in .*expected image files"):
        Video.from_folder(tmp_path)


def test_clip_longer_than_a_video_names_the_video():
    with pytest.raises(DataError, match="clip_length=5 is longer than the videos 'short' \\(3 frames\\)"):
        ClipDataset([random_video("long", 9), random_video("short", 3)], clip_length=5)


def test_frames_of_mixed_sizes_name_the_odd_file(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "000.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "001.png")
    with pytest.raises(DataError, match="mixed sizes.*001.png is 8x9.*resize them"):
        Video.from_folder(tmp_path)


def test_unreadable_video_file_says_how_to_fix_it(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DataError, match="cannot read the video file .*broken.mp4.*re-encode"):
        Video.from_file(broken)
    with pytest.raises(DataError, match="does not exist"):
        Video.from_file(tmp_path / "missing.avi")


def test_mask_count_must_match_the_frames(tmp_path):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    for folder, n in ((frames, 4), (masks, 3)):
        folder.mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(DataError, match="4 frames but .* holds 3 mask images"):
        Video.from_folder(frames, mask_folder=masks)


def test_bad_avenue_masks_are_named(tmp_path):
    from adlearn.data.video import MatMasks

    frames = generate_videos("test", 0, 1, 6, SMALL)[0]["frames"]
    path = write_video_file(tmp_path / "01.avi", frames)
    broken = tmp_path / "1_label.mat"
    broken.write_bytes(b"not a MATLAB file")
    with pytest.raises(DataError, match="cannot read Avenue masks .*volLabel"):
        MatMasks(broken)
    wrong = np.zeros((6, SMALL[0] // 2, SMALL[1]), np.uint8)  # masks of another size than the frames
    video = Video.from_file(path, masks=wrong)
    with pytest.raises(DataError, match="mask 0 is 32x80 but the frames are 64x80"):
        video.mask(0)
    with pytest.raises(DataError, match="6 frames but 5 masks"):
        Video.from_file(path, masks=wrong[:5])


def test_wrong_layouts_and_arguments_are_named(tmp_path):
    with pytest.raises(DataError, match="UCSD Ped2 layout"):
        ucsd_ped2(tmp_path, "train")
    with pytest.raises(DataError, match="Avenue layout"):
        avenue(tmp_path, "test")
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        ucsd_ped2(tmp_path, "val")
    with pytest.raises(DataError, match="frames_between_clips must be >= 1"):
        ClipDataset([random_video("a", 4)], frames_between_clips=0)
    with pytest.raises(DataError, match="uint8"):
        Video.from_arrays("f", np.zeros((2, 4, 4, 3), np.float32))
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(DataError, match="frame 1 has label 1 but kind ''; anomalous frames need a kind"):
        Video.from_arrays("k", frames, frame_labels=[0, 1, 0], kinds=["", "", ""])
    with pytest.raises(DataError, match="unknown anomaly kinds \\['speed'\\]"):
        Video.from_arrays("k", frames, frame_labels=[0, 1, 0], kinds=["", "speed", ""])
    with pytest.raises(DataError, match="3 frames but 2 frame labels"):
        Video.from_arrays("k", frames, frame_labels=[0, 1])
    with pytest.raises(IndexError, match="frame 7 out of range"):
        random_video("a", 4).frame(7)


def test_every_combination_of_defaults_builds():
    """Default clip settings on the default synthetic size work for both splits (what AI-VAD uses)."""
    for split, n in itertools.product(("train", "test"), (1,)):
        videos = synthetic_surveillance(split, n_videos=n, n_frames=8, size=SMALL, cache=False)
        ds = ClipDataset(videos)
        assert len(ds) == 7 and ds[0]["frames"].shape == (2, 3, *SMALL)


# =========================================================================== download scripts
def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "data_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ucsd_script_unpacks_a_tiny_archive(tmp_path, capsys):
    tree = write_ucsd_folder(tmp_path / "tree", n_train=1, n_test=2, n_frames=6, size=SMALL)
    archive = tmp_path / "UCSD_Anomaly_Dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # the real archive wraps everything in one folder
        tar.add(tree / "UCSDped2", arcname="UCSD_Anomaly_Dataset.v1p2/UCSDped2")
    script = load_script("download_ucsd_ped2")
    dest = tmp_path / "ucsd"
    argv = ["--dest", str(dest), "--sha256", sha256_file(archive), "--no-progress"]
    assert script.main([*argv, "--url", archive.as_uri()]) == 0, capsys.readouterr().err  # a download
    assert (dest / "UCSD_Anomaly_Dataset.tar.gz").is_file()
    test = ucsd_ped2(dest / "UCSD_Anomaly_Dataset.v1p2", "test")
    truth = generate_videos("test", 0, 2, 6, SMALL)
    assert [v.frame_labels.tolist() for v in test] == [t["labels"].tolist() for t in truth]
    assert "2 test videos" in capsys.readouterr().out
    # a local archive whose checksum is not the published one is refused, with the reason
    assert script.main(["--archive", str(archive), "--dest", str(tmp_path / "b"), "--no-progress"]) == 1
    assert "sha256" in capsys.readouterr().err


def test_avenue_script_unpacks_and_converts_masks(tmp_path, capsys):
    tree = write_avenue_folder(tmp_path / "tree", n_train=1, n_test=2, n_frames=8, size=SMALL, mat_masks=True)
    videos, labels = tmp_path / "Avenue_Dataset.zip", tmp_path / "ground_truth_demo.zip"
    with zipfile.ZipFile(videos, "w") as archive:  # as published: everything under "Avenue Dataset/"
        for path in sorted(tree.glob("*_videos/*.avi")):
            archive.write(path, f"Avenue Dataset/{path.relative_to(tree)}")
    with zipfile.ZipFile(labels, "w") as archive:
        for path in sorted((tree / "ground_truth_demo").rglob("*.mat")):
            archive.write(path, str(path.relative_to(tree)))
    dest = tmp_path / "avenue"
    argv = ["--dest", str(dest), "--archive", str(videos), "--annotations", str(labels), "--no-progress"]
    argv += ["--sha256", sha256_file(videos), "--annotations-sha256", sha256_file(labels)]
    assert load_script("download_avenue").main(argv) == 0, capsys.readouterr().err
    label_dir = dest / "ground_truth_demo" / "testing_label_mask"
    assert sorted(p.name for p in label_dir.iterdir() if p.is_dir()) == ["1_label", "2_label"]
    assert len(list((label_dir / "1_label").glob("*.png"))) == 8
    truth = generate_videos("test", 0, 2, 8, SMALL)
    test = avenue(dest, "test")
    assert all(isinstance(v.masks_source, type(test[0].masks_source)) for v in test)
    assert type(test[0].masks_source).__name__ == "FolderMasks"  # the converted PNG folders are preferred
    for video, item in zip(test, truth):
        assert all(np.array_equal(video.mask(i), item["masks"][i]) for i in range(8))
    assert [v.name for v in avenue(dest, "train")] == ["01"]


def test_video_scripts_run_as_programs():
    for name in ("download_ucsd_ped2", "download_avenue"):
        script = Path(__file__).resolve().parents[1] / "data_scripts" / f"{name}.py"
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "--archive" in result.stdout


# =========================================================================== the picture helper
def test_frame_strip_shows_a_clip_with_its_labels(tmp_path):
    from adlearn.plotting import frame_strip

    video = synthetic_surveillance("test", n_videos=1, n_frames=12, size=SMALL, cache=False)[0]
    item = ClipDataset([video], clip_length=4, frames_between_clips=4)[2]  # frames 8..11
    fig = frame_strip(item["frames"], item["frame_labels"], masks=item["masks"], path=tmp_path / "strip.png")
    assert len(fig.axes) == 4 and (tmp_path / "strip.png").is_file()
    for ax, label in zip(fig.axes, item["frame_labels"].tolist()):
        assert ax.get_title().endswith("anomalous" if label else "normal")
        shown = ax.get_images()[0].get_array()
        assert shown.shape == (*SMALL, 3)
    channels_last = np.stack([video.frame(i) for i in range(8, 12)])  # uint8 (T, H, W, 3) gives the same picture
    same = frame_strip(channels_last)
    for a, b in zip(fig.axes, same.axes):
        assert np.allclose(a.get_images()[0].get_array(), b.get_images()[0].get_array(), atol=1e-6)
    with pytest.raises(ValueError, match="labels has 2 entries for 4 frames"):
        frame_strip(channels_last, labels=[0, 1])


# =========================================================================== the design contract
def test_a_clip_item_has_the_keys_and_types_design_md_documents():
    import re

    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    section = design.split("| clip key | type | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in section.strip().splitlines()[1:]]
    documented = {re.search(r"`(\w+)`", key).group(1): kind.strip() for key, kind, _ in rows}
    video = synthetic_surveillance("test", n_videos=1, n_frames=10, size=SMALL, cache=False)[0]
    item = ClipDataset([video], clip_length=3)[0]
    assert set(item) == set(documented)
    python_types = {"bool": bool, "str": str, "int": int}
    for key, kind in documented.items():
        if kind in python_types:
            assert type(item[key]) is python_types[kind], key
        else:
            dtype, shape = re.match(r"(float|long) tensor `\(([^)]*)\)`", kind).groups()
            assert item[key].dtype == (torch.float32 if dtype == "float" else torch.int64), key
            assert item[key].dim() == len([s for s in shape.split(",") if s.strip()]), key
