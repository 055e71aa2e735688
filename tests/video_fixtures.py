"""Small video folders and files for tests, written from the synthetic surveillance videos.

``write_ucsd_folder(tmp_path)`` writes a tiny dataset in the UCSD Ped2 layout that
``adlearn.data.ucsd_ped2`` (and ``adlearn evaluate ai_vad`` on it) reads:

    <root>/UCSDped2/Train/Train001/001.tif ...
    <root>/UCSDped2/Test/Test001/001.tif ...
    <root>/UCSDped2/Test/Test001_gt/001.bmp ...   (0/255 masks)

``write_avenue_folder(tmp_path)`` writes the CUHK Avenue layout (AVI files through PyAV, masks as
MATLAB ``volLabel`` files); ``write_video_file`` writes any array of frames as a video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adlearn.data.synthetic_video import generate_videos


def _grey(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W), the ITU-R 601 luma UCSD's grey frames correspond to."""
    return np.round(frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


def write_ucsd_folder(
    tmp_path: str | Path,
    n_train: int = 2,
    n_test: int = 2,
    n_frames: int = 12,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    grey: bool = True,
) -> Path:
    """Write a UCSD-Ped2-layout folder under ``tmp_path`` and return ``tmp_path`` (it holds ``UCSDped2/``).

    The frames are the synthetic surveillance videos (grey like Ped2's unless ``grey=False``); the
    test masks are the generator's ground truth. Test video ``i`` holds event ``EVENT_ORDER[i]``.
    """
    root = Path(tmp_path)
    base = root / "UCSDped2"
    for split, folder, count in (("train", "Train", n_train), ("test", "Test", n_test)):
        for index, item in enumerate(generate_videos(split, seed, count, n_frames, size)):
            frames_dir = base / folder / f"{folder}{index + 1:03d}"
            frames_dir.mkdir(parents=True, exist_ok=True)
            masks_dir = frames_dir.with_name(f"{frames_dir.name}_gt")
            if split == "test":
                masks_dir.mkdir(parents=True, exist_ok=True)
            for t in range(n_frames):
                frame = _grey(item["frames"][t]) if grey else item["frames"][t]
                Image.fromarray(frame).save(frames_dir / f"{t + 1:03d}.tif")
                if split == "test":
                    Image.fromarray(item["masks"][t] * 255).save(masks_dir / f"{t + 1:03d}.bmp")
    return root


def write_video_file(
    path: str | Path, frames: np.ndarray, codec: str | None = None, fps: int = 25, b_frames: int = 0
) -> Path:
    """Encode ``uint8 (N, H, W, 3)`` frames with PyAV: H.264 in ``.mp4``, MPEG-4 part 2 (like Xvid) otherwise.

    A key frame every 12 frames; ``b_frames`` > 0 adds bidirectional frames, so frames are stored out
    of display order (as in many real files)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or ("libx264" if path.suffix == ".mp4" else "mpeg4")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options={"g": "12", "bf": str(int(b_frames))})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {**stream.options, "crf": "10"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_avenue_folder(
    tmp_path: str | Path,
    n_train: int = 1,
    n_test: int = 2,
    n_frames: int = 12,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    mat_masks: bool = True,
) -> Path:
    """Write the CUHK Avenue layout under ``tmp_path`` and return it: ``training_videos/01.avi``,
    ``testing_videos/01.avi`` and ``ground_truth_demo/testing_label_mask/1_label.mat`` (``volLabel``,
    one mask per frame), or with ``mat_masks=False`` the converted folders ``1_label/000.png``."""
    import scipy.io

    root = Path(tmp_path)
    for split, folder, count in (("train", "training_videos", n_train), ("test", "testing_videos", n_test)):
        for index, item in enumerate(generate_videos(split, seed, count, n_frames, size)):
            write_video_file(root / folder / f"{index + 1:02d}.avi", item["frames"])
            if split != "test":
                continue
            labels = root / "ground_truth_demo" / "testing_label_mask"
            labels.mkdir(parents=True, exist_ok=True)
            if mat_masks:
                cells = np.empty((1, n_frames), dtype=object)
                for t in range(n_frames):
                    cells[0, t] = item["masks"][t].astype(np.uint8)
                scipy.io.savemat(labels / f"{index + 1}_label.mat", {"volLabel": cells})
            else:
                folder_t = labels / f"{index + 1}_label"
                folder_t.mkdir(exist_ok=True)
                for t in range(n_frames):
                    Image.fromarray(item["masks"][t] * 255).save(folder_t / f"{t:03d}.png")
    return root


# ---------------------------------------------------------------------------- tiny AI-VAD runs
TINY_VIDEO = {"min_bbox_area": 10, "deep_crop_size": 32}  # AI-VAD on small frames: small regions, small crops
