"""Videos and clips of consecutive frames: the data layer of video anomaly detection.

A video model such as AI-VAD looks at *clips*: a few consecutive frames, so that motion can be
measured between them. This module gives every video source one shape and cuts it into clips:

* `Video` — one video: its ``name``, ``n_frames``, per-frame ``frame_labels`` (0 normal, 1
  anomalous), per-frame ``kinds`` of anomaly (``""`` for normal frames, else ``"velocity"``,
  ``"pose"`` or ``"appearance"``, the attributes the AI-VAD paper separates), ``has_masks``, and
  the methods ``frame(i)`` (``uint8 (H, W, 3)``) and ``mask(i)`` (``uint8 (H, W)`` in {0, 1}).
  It reads from an in-memory array (`Video.from_arrays`, the synthetic dataset), a folder of
  frame images (`Video.from_folder`) or a video file (`Video.from_file`).
* `ClipDataset` — a torch ``Dataset`` of clips of ``clip_length`` consecutive frames, one clip
  starting every ``frames_between_clips`` frames, never crossing the end of a video (the clip
  indexing of anomalib's ``ClipsIndexer``, ``anomalib.data.utils.video``).
* `ucsd_ped2`, `avenue` — the two public benchmarks in the layouts their archives unpack to
  (``data_scripts/download_ucsd_ped2.py`` and ``data_scripts/download_avenue.py`` fetch them).

Video files are decoded with PyAV (FFmpeg's libraries; ``pip install av``): it reads every
container and codec FFmpeg does (AVI with Xvid as in Avenue, MP4 with H.264) and seeks by
timestamp, without an FFmpeg binary on the ``PATH``. It is imported only when a video file is
opened.

A clip item is a ``dict`` (the default ``DataLoader`` collate stacks it):

===================  ==========================  =============================================
key                  type                        meaning
===================  ==========================  =============================================
``frames``           float ``(T, 3, H, W)``      the clip's frames in [0, 1] (RGB)
``frame_labels``     long ``(T,)``               0 normal, 1 anomalous, per frame
``masks``            float ``(T, H, W)``         ground-truth pixels, zeros without masks
``has_masks``        bool                        whether the video has pixel masks at all
``video``            str                         the video's name
``frame_indices``    long ``(T,)``               the frames' indices in their video
``label``            int                         1 if any frame of the clip is anomalous
===================  ==========================  =============================================
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adlearn.data.errors import DataError

#: Frame and mask image files a folder reader accepts (lower-case suffixes).
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Video containers `video_files` lists (anything FFmpeg reads also opens with `Video.from_file`).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")
#: The anomaly kinds a frame may carry (AI-VAD's three attributes); ``""`` is a normal frame.
ANOMALY_KINDS = ("velocity", "pose", "appearance")


# =========================================================================== helpers
def _natural_key(path: Path) -> list[Any]:
    """Sort ``frame2.png`` before ``frame10.png``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def image_files(folder: str | Path, extensions: Sequence[str] = FRAME_EXTENSIONS) -> list[Path]:
    """The image files directly in ``folder``, in natural order; hidden files (``._x.tif``) skipped."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")),
        key=_natural_key,
    )


def as_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """``uint8 (H, W, 3)`` from a grey ``(H, W)``, ``(H, W, 1)``, RGB or RGBA image array."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise DataError(f"{where}: frames must be uint8 (0..255), got {array.dtype}; convert with np.uint8(...)")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3])
    raise DataError(f"{where}: a frame must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGB")
            return np.asarray(image)
    except OSError as error:
        raise DataError(f"cannot read the image {path} ({error}); replace or delete the file") from error


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header only."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as error:
        raise DataError(f"cannot read the image {path} ({error}); replace or delete the file") from error


def _binary_mask(array: np.ndarray) -> np.ndarray:
    """Any non-zero pixel (any channel) is anomalous: ``uint8 (H, W)`` in {0, 1}."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array.max(axis=2)
    return (array > 0).astype(np.uint8)


def _check_same_sizes(sizes: Sequence[tuple[int, int]], names: Sequence[str], what: str) -> tuple[int, int]:
    first = sizes[0]
    for size, name in zip(sizes, names):
        if tuple(size) != tuple(first):
            raise DataError(
                f"{what} has frames of mixed sizes: {names[0]} is {first[0]}x{first[1]} (HxW) but {name} is "
                f"{size[0]}x{size[1]}; a video's frames must all have one size: resize them or move the odd "
                "ones out"
            )
    return int(first[0]), int(first[1])


# =========================================================================== frame sources
class ArrayFrames:
    """Frames held in memory (or a memory-mapped ``.npy``): ``uint8 (N, H, W, 3)`` or ``(N, H, W)``."""

    def __init__(self, frames: np.ndarray, where: str = "frames"):
        if not isinstance(frames, np.ndarray) or frames.ndim not in (3, 4) or len(frames) == 0:
            shape = getattr(frames, "shape", None)
            raise DataError(f"{where}: expected a uint8 array (N, H, W, 3) or (N, H, W) with N >= 1, got {shape}")
        as_rgb(frames[0], where)  # checks dtype and channels once
        self.frames = frames
        self.size = (int(frames.shape[1]), int(frames.shape[2]))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> np.ndarray:
        return as_rgb(np.asarray(self.frames[i]), "frames")


class FolderFrames:
    """One image file per frame, read when asked for; every header is checked for one size up front."""

    def __init__(self, paths: Sequence[Path], where: str):
        self.paths = list(paths)
        self.size = _check_same_sizes([_image_size(p) for p in self.paths], [p.name for p in self.paths], where)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return as_rgb(_read_image(self.paths[i]), str(self.paths[i]))


class VideoFileFrames:
    """Frames decoded from a video file with PyAV, on demand.

    Opening the file demuxes it once (no decoding) to list every frame's presentation timestamp,
    which gives the frame count and the seek targets. Reading frame ``i`` continues decoding
    when ``i`` lies a little ahead of the last decoded frame (clips are read in order), otherwise
    seeks to the key frame before ``i`` and decodes forward. The last ``cache_size`` decoded
    frames are kept, so overlapping clips decode each frame once.
    """

    def __init__(self, path: str | Path, cache_size: int = 32):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"video file {self.path} does not exist; check the path")
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._container = None
        self._decoded = None  # iterator over decoded frames, positioned after frame ``self._last``
        self._last: int | None = -1  # index of the last frame the iterator produced
        self.pts = self._frame_timestamps()
        if not self.pts:
            raise DataError(f"the video file {self.path} holds no video frames; re-export it or remove it")
        first = self._decode(0)
        self.size = (int(first.shape[0]), int(first.shape[1]))

    def _open(self):
        import av  # lazy: PyAV loads FFmpeg's libraries

        try:
            container = av.open(str(self.path))
            if not container.streams.video:
                container.close()
                raise DataError(f"{self.path} has no video stream; is it an audio file?")
            return container
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise DataError(
                f"cannot read the video file {self.path} ({error}); check that it is a complete video FFmpeg can "
                "decode, or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4) or extract its frames to a folder"
            ) from error

    def _frame_timestamps(self) -> list[int]:
        import av

        container = self._open()
        try:
            stream = container.streams.video[0]
            stamps = []
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None and packet.size > 0:
                    stamps.append(int(stamp))
        except av.error.FFmpegError as error:
            raise DataError(
                f"cannot read the video file {self.path} ({error}); it may be truncated: download it again"
            ) from error
        finally:
            container.close()
        return sorted(stamps)

    def __len__(self) -> int:
        return len(self.pts)

    def _restart(self, index: int | None) -> None:
        """Seek to the key frame at or before frame ``index`` (``None``: the very start) and decode from there."""
        import av

        if self._container is not None and index is None:
            self._container.close()
            self._container = None
        if self._container is None:
            self._container = self._open()
        stream = self._container.streams.video[0]
        if index is not None:
            try:
                self._container.seek(self.pts[index], stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:  # an unseekable file: decode it from the start
                return self._restart(None)
        self._decoded = self._container.decode(stream)
        self._last = None  # unknown until the first frame's timestamp is read

    def _decode_until(self, index: int) -> None:
        """Run the decoder up to frame ``index``, keeping the frames just before it in the cache."""
        import av

        try:
            for frame in self._decoded:
                stamp = frame.pts if frame.pts is not None else frame.dts
                position = self._index_of(stamp)
                self._last = position
                if position is None:
                    continue
                if position >= index - self.cache_size:
                    self._remember(position, frame.to_ndarray(format="rgb24"))
                if position >= index:
                    return
        except av.error.FFmpegError as error:
            raise DataError(
                f"cannot decode frame {index} of {self.path} ({error}); the file may be damaged: re-encode it"
            ) from error

    def _decode(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        near_ahead = self._decoded is not None and self._last is not None and 0 <= index - self._last <= 64
        if not near_ahead:
            self._restart(index)
        self._decode_until(index)
        if index not in self._cache:  # a seek that landed past the frame: decode from the start instead
            self._restart(None)
            self._decode_until(index)
        if index not in self._cache:
            raise DataError(
                f"frame {index} of {self.path} could not be decoded (the file lists {len(self.pts)} frames); "
                "re-encode the video (ffmpeg -i IN -c:v libx264 OUT.mp4)"
            )
        return self._cache[index]

    def _index_of(self, stamp: int | None) -> int | None:
        if stamp is None:
            return None
        i = int(np.searchsorted(self.pts, stamp))
        return i if i < len(self.pts) and self.pts[i] == stamp else None

    def _remember(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._decode(i)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._decoded, self._last = None, None, -1

    def __getstate__(self) -> dict:  # DataLoader workers: each reopens the file itself
        state = self.__dict__.copy()
        state.update(_container=None, _decoded=None, _last=-1, _cache=OrderedDict())
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# =========================================================================== mask sources
class ArrayMasks:
    """Masks in memory: ``(N, H, W)``, any non-zero pixel anomalous."""

    def __init__(self, masks: np.ndarray):
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> np.ndarray:
        return _binary_mask(self.masks[i])


class FolderMasks:
    """One mask image per frame (UCSD's ``Test001_gt/*.bmp``, Avenue's converted ``*_label/*.png``)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return _binary_mask(_read_image(self.paths[i]))


class MatMasks:
    """Avenue's MATLAB ground truth: ``volLabel``, one ``(H, W)`` mask per frame, in ``N_label.mat``.

    The whole file is read once per process and kept (one video's masks at a time).
    """

    _loaded: dict[str, np.ndarray] = {}

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.n = len(self._masks())

    def _masks(self) -> np.ndarray:
        key = str(self.path)
        if key not in MatMasks._loaded:
            import scipy.io
            from scipy.io.matlab import MatReadError

            try:
                volume = scipy.io.loadmat(self.path)["volLabel"]
            except (OSError, ValueError, KeyError, NotImplementedError, MatReadError) as error:
                raise DataError(
                    f"cannot read Avenue masks from {self.path} ({error}); expected a MATLAB file with a "
                    "'volLabel' cell array (one mask per frame): download the annotations again"
                ) from error
            masks = np.stack([_binary_mask(np.asarray(m)) for m in np.asarray(volume, dtype=object).ravel()])
            MatMasks._loaded.clear()  # keep one video's masks, not all of them
            MatMasks._loaded[key] = masks
        return MatMasks._loaded[key]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self._masks()[i]


# =========================================================================== Video
@dataclass(eq=False)  # compared by identity: two readers of one file are two videos
class Video:
    """One video: frames on demand, per-frame labels and anomaly kinds, optional pixel masks.

    Build one with `from_arrays`, `from_folder` or `from_file`. ``frame(i)`` is ``uint8 (H, W,
    3)`` RGB (grey sources are repeated over three channels); ``mask(i)`` is ``uint8 (H, W)``
    in {0, 1}, all zeros when the video has no masks.
    """

    name: str
    n_frames: int
    frame_labels: np.ndarray  # (N,) int64, 0 normal / 1 anomalous
    kinds: list[str]  # (N,) "" for normal frames, else one of ANOMALY_KINDS
    has_masks: bool
    frames_source: Any = field(repr=False)
    masks_source: Any = field(default=None, repr=False)
    source: str = ""  # the file or folder read, "memory" for arrays

    def __post_init__(self):
        self.frame_labels = np.asarray(self.frame_labels, dtype=np.int64).reshape(-1)
        self.kinds = [str(k) for k in self.kinds]
        where = f"video {self.name!r}"
        if len(self.frames_source) != self.n_frames:
            raise DataError(f"{where}: n_frames={self.n_frames} but the source has {len(self.frames_source)} frames")
        if len(self.frame_labels) != self.n_frames or len(self.kinds) != self.n_frames:
            raise DataError(
                f"{where}: {self.n_frames} frames but {len(self.frame_labels)} frame labels and {len(self.kinds)} "
                "kinds; give one label and one kind per frame"
            )
        if not np.isin(self.frame_labels, (0, 1)).all():
            raise DataError(f"{where}: frame labels must be 0 (normal) or 1 (anomalous)")
        unknown = sorted(set(self.kinds) - {"", *ANOMALY_KINDS})
        if unknown:
            raise DataError(f"{where}: unknown anomaly kinds {unknown}; use '' (normal) or one of {ANOMALY_KINDS}")
        mismatched = [
            i for i, (label, kind) in enumerate(zip(self.frame_labels, self.kinds)) if bool(label) != bool(kind)
        ]
        if mismatched:
            raise DataError(
                f"{where}: frame {mismatched[0]} has label {self.frame_labels[mismatched[0]]} but kind "
                f"{self.kinds[mismatched[0]]!r}; anomalous frames need a kind, normal frames the kind ''"
            )
        if self.has_masks and (self.masks_source is None or len(self.masks_source) != self.n_frames):
            count = 0 if self.masks_source is None else len(self.masks_source)
            raise DataError(
                f"{where}: {self.n_frames} frames but {count} masks; give one mask per frame (or none at all)"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return self.frames_source.size

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range for video {self.name!r} with {self.n_frames} frames")
        return i

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``uint8 (H, W, 3)`` RGB."""
        return self.frames_source[self._check_index(i)]

    def mask(self, i: int) -> np.ndarray:
        """Ground-truth mask of frame ``i`` as ``uint8 (H, W)`` in {0, 1} (zeros without masks)."""
        i = self._check_index(i)
        if not self.has_masks:
            return np.zeros(self.size, dtype=np.uint8)
        mask = self.masks_source[i]
        if mask.shape != self.size:
            raise DataError(
                f"video {self.name!r}: mask {i} is {mask.shape[0]}x{mask.shape[1]} but the frames are "
                f"{self.size[0]}x{self.size[1]}; masks must have the frames' size"
            )
        return mask

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        name: str,
        frames: np.ndarray,
        masks: np.ndarray | None = None,
        frame_labels: Sequence[int] | np.ndarray | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Video:
        """A video held in memory. Without ``frame_labels``, a frame is anomalous when its mask has
        a pixel (all normal without masks); without ``kinds``, anomalous frames get ``"appearance"``."""
        where = f"video {name!r}"
        source = ArrayFrames(frames, where)
        masks_source = None
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or masks.shape[1:] != source.size:
                raise DataError(
                    f"{where}: masks must be (N, H, W) = ({len(source)}, {source.size[0]}, {source.size[1]}), "
                    f"got {masks.shape}"
                )
            masks_source = ArrayMasks(masks)
        labels = _labels_from(frame_labels, masks_source, len(source))
        return cls(
            name, len(source), labels, _kinds_from(kinds, labels), masks is not None, source, masks_source, "memory"
        )

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        mask_folder: str | Path | None = None,
        name: str | None = None,
        frame_labels: Sequence[int] | np.ndarray | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Video:
        """A folder of frame images (``.png``, ``.jpg``, ``.bmp``, ``.tif``), in natural name order;
        optionally a folder with one mask image per frame, in the same order."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"frame folder {folder} does not exist; check the path")
        paths = image_files(folder)
        if not paths:
            raise DataError(
                f"no frames in {folder}: expected image files ({', '.join(FRAME_EXTENSIONS)}), one per frame; "
                "point at the folder that holds the frames (extract a video's frames with ffmpeg -i IN %04d.png)"
            )
        source = FolderFrames(paths, f"frame folder {folder}")
        masks_source = _folder_masks(mask_folder, len(paths), source.size, folder)
        labels = _labels_from(frame_labels, masks_source, len(paths))
        return cls(
            name or folder.name,
            len(paths),
            labels,
            _kinds_from(kinds, labels),
            masks_source is not None,
            source,
            masks_source,
            str(folder),
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        mask_folder: str | Path | None = None,
        masks: Any = None,
        name: str | None = None,
        frame_labels: Sequence[int] | np.ndarray | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Video:
        """A video file decoded with PyAV; masks from a folder of images (``mask_folder``) or any
        indexable of ``(H, W)`` masks (``masks``, e.g. `MatMasks`)."""
        path = Path(path)
        source = VideoFileFrames(path)
        if mask_folder is not None and masks is not None:
            raise DataError("give mask_folder or masks, not both")
        masks_source = _folder_masks(mask_folder, len(source), source.size, path) if mask_folder else masks
        if masks_source is not None and len(masks_source) != len(source):
            raise DataError(f"{path} has {len(source)} frames but {len(masks_source)} masks; give one mask per frame")
        labels = _labels_from(frame_labels, masks_source, len(source))
        return cls(
            name or path.stem,
            len(source),
            labels,
            _kinds_from(kinds, labels),
            masks_source is not None,
            source,
            masks_source,
            str(path),
        )


def _folder_masks(mask_folder: str | Path | None, n_frames: int, size: tuple[int, int], what: Path):
    if mask_folder is None:
        return None
    mask_folder = Path(mask_folder)
    if not mask_folder.is_dir():
        raise DataError(f"mask folder {mask_folder} does not exist; check the path or pass mask_folder=None")
    paths = image_files(mask_folder)
    if len(paths) != n_frames:
        raise DataError(
            f"{what} has {n_frames} frames but {mask_folder} holds {len(paths)} mask images; "
            "give one mask per frame, named in the frames' order"
        )
    _check_same_sizes([size] + [_image_size(p) for p in paths], ["the frames", *(p.name for p in paths)], str(what))
    return FolderMasks(paths)


def _labels_from(frame_labels, masks_source, n: int) -> np.ndarray:
    if frame_labels is not None:
        return np.asarray(frame_labels, dtype=np.int64)
    if masks_source is None:
        return np.zeros(n, dtype=np.int64)
    return np.array([int(masks_source[i].any()) for i in range(len(masks_source))], dtype=np.int64)


def _kinds_from(kinds, labels: np.ndarray) -> list[str]:
    if kinds is not None:
        return list(kinds)
    return ["appearance" if label else "" for label in labels]


# =========================================================================== clips
def clip_starts(n_frames: int, clip_length: int, frames_between_clips: int) -> list[int]:
    """First frames of the clips of one video: ``0, step, 2 step, ...`` while the clip still fits."""
    return list(range(0, n_frames - clip_length + 1, frames_between_clips))


class ClipDataset(Dataset):
    """Clips of ``clip_length`` consecutive frames from a list of `Video` objects.

    A clip starts every ``frames_between_clips`` frames of each video and never crosses the end
    of its video (the frames left over at the end, fewer than a clip, are not used).
    ``clip_index[k]`` is ``(video_idx, start)`` of item ``k``. ``transform``, when given, is
    called on each item ``dict`` and returns it (so it can resize ``frames`` and ``masks``
    together, e.g. `resize_clip`).
    """

    def __init__(
        self,
        videos: Sequence[Video],
        clip_length: int = 2,
        frames_between_clips: int = 1,
        transform: Callable[[dict], dict] | None = None,
    ):
        videos = list(getattr(videos, "videos", videos))
        if not videos:
            raise DataError("no videos given; pass a list of Video objects (e.g. synthetic_surveillance('train'))")
        for video in videos:
            if not isinstance(video, Video):
                raise DataError(f"ClipDataset takes Video objects, got {type(video).__name__}")
        if int(clip_length) < 1 or int(frames_between_clips) < 1:
            raise DataError(
                f"clip_length and frames_between_clips must be >= 1, got {clip_length} and {frames_between_clips}"
            )
        short = [f"{v.name!r} ({v.n_frames} frames)" for v in videos if v.n_frames < int(clip_length)]
        if short:
            raise DataError(
                f"clip_length={clip_length} is longer than the videos {', '.join(short)}; "
                "use a shorter clip_length or leave those videos out"
            )
        self.videos = videos
        self.clip_length = int(clip_length)
        self.frames_between_clips = int(frames_between_clips)
        self.transform = transform
        self.clip_index: list[tuple[int, int]] = [
            (v, start)
            for v, video in enumerate(videos)
            for start in clip_starts(video.n_frames, self.clip_length, self.frames_between_clips)
        ]

    def __len__(self) -> int:
        return len(self.clip_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_idx, start = self.clip_index[index]
        video = self.videos[video_idx]
        indices = np.arange(start, start + self.clip_length)
        frames = np.stack([video.frame(i) for i in indices])  # (T, H, W, 3) uint8
        masks = np.stack([video.mask(i) for i in indices]).astype(np.float32)  # (T, H, W)
        labels = video.frame_labels[indices]
        item = {
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0),  # (T, 3, H, W)
            "frame_labels": torch.from_numpy(labels.copy()),  # (T,)
            "masks": torch.from_numpy(masks),  # (T, H, W)
            "has_masks": bool(video.has_masks),
            "video": video.name,
            "frame_indices": torch.from_numpy(indices.astype(np.int64)),  # (T,)
            "label": int(labels.max()),
        }
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return (
            f"ClipDataset({len(self.videos)} videos, {len(self)} clips of {self.clip_length} frames, "
            f"one every {self.frames_between_clips})"
        )


def resize_clip(size: int | tuple[int, int]) -> Callable[[dict], dict]:
    """A `ClipDataset` transform: frames resized bilinearly, masks by nearest neighbour, to ``size`` (H, W)."""
    height, width = (size, size) if isinstance(size, int) else size

    def transform(item: dict) -> dict:
        frames = torch.nn.functional.interpolate(
            item["frames"], size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        masks = torch.nn.functional.interpolate(item["masks"][:, None], size=(height, width), mode="nearest")[:, 0]
        return {**item, "frames": frames.clamp_(0, 1), "masks": masks}

    return transform


# =========================================================================== public layouts
def _split_name(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return split


def ucsd_ped2(root: str | Path, split: str = "train") -> list[Video]:
    """UCSD Ped2 as its archive unpacks: ``UCSDped2/{Train,Test}/<Video>/*.tif`` with the test masks
    in ``Test/<Video>_gt/*.bmp``.

    ``root`` is the folder holding ``UCSDped2/`` (or ``UCSDped2`` itself). A frame is anomalous
    when its mask has a pixel (Ped2 gives masks for every test video); Ped2's anomalies are
    bicycles, skateboards and carts among pedestrians, so their kind is recorded as
    ``"appearance"`` (some are also fast). Frames are grey and returned as RGB.
    """
    split = _split_name(split)
    root = Path(root).expanduser()
    base = root / "UCSDped2" if (root / "UCSDped2").is_dir() else root
    folder = base / ("Train" if split == "train" else "Test")
    if not folder.is_dir():
        raise DataError(
            f"no {folder.name}/ folder in {base}; expected the UCSD Ped2 layout UCSDped2/Train/Train001/*.tif "
            "(download it with data_scripts/download_ucsd_ped2.py)"
        )
    video_dirs = [d for d in sorted(folder.iterdir(), key=_natural_key) if d.is_dir() and not d.name.endswith("_gt")]
    video_dirs = [d for d in video_dirs if image_files(d)]
    if not video_dirs:
        raise DataError(f"no video folders with frames in {folder}; expected {folder}/{folder.name}001/*.tif")
    videos = []
    for d in video_dirs:
        gt = d.with_name(f"{d.name}_gt")
        videos.append(Video.from_folder(d, mask_folder=gt if split == "test" and gt.is_dir() else None))
    return videos


def avenue(root: str | Path, split: str = "train", gt_dir: str | Path | None = None) -> list[Video]:
    """CUHK Avenue: ``training_videos/01.avi``, ``testing_videos/01.avi`` and per-video test masks.

    This follows the layout anomalib's ``avenue`` data module reads: the masks are in
    ``<gt_dir>/testing_label_mask/`` (``gt_dir`` defaults to ``<root>/ground_truth_demo``, where
    the annotation archive unpacks; ``<root>`` itself is tried too), for video ``01.avi`` either
    as ``1_label.mat`` (MATLAB, a ``volLabel`` cell of per-frame masks, as published) or as a
    folder ``1_label/`` of one mask image per frame (what ``download_avenue.py`` converts them
    to). A frame is anomalous when its mask has a pixel; Avenue's anomalies (running, throwing,
    a wrong direction, loitering) are recorded as ``"appearance"`` since the dataset does not
    name their kinds. Test videos without a mask file have no masks and are all-normal labels.
    """
    split = _split_name(split)
    root = Path(root).expanduser()
    folder = root / ("training_videos" if split == "train" else "testing_videos")
    if not folder.is_dir():
        raise DataError(
            f"no {folder.name}/ folder in {root}; expected the Avenue layout training_videos/01.avi, "
            "testing_videos/01.avi (download it with data_scripts/download_avenue.py)"
        )
    files = video_files(folder)
    if not files:
        raise DataError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {folder}")
    if split == "train":
        return [Video.from_file(path) for path in files]
    label_dirs = [Path(gt_dir) / "testing_label_mask"] if gt_dir is not None else []
    label_dirs += [root / "ground_truth_demo" / "testing_label_mask", root / "testing_label_mask"]
    label_dir = next((d for d in label_dirs if d.is_dir()), None)
    if gt_dir is not None and label_dir != label_dirs[0]:
        raise DataError(f"no testing_label_mask/ folder in {gt_dir}; point gt_dir at the unpacked annotations")
    videos = []
    for path in files:
        stem = path.stem.lstrip("0") or "0"
        masks_folder = label_dir / f"{stem}_label" if label_dir is not None else None
        mat = label_dir / f"{stem}_label.mat" if label_dir is not None else None
        if masks_folder is not None and masks_folder.is_dir():
            videos.append(Video.from_file(path, mask_folder=masks_folder))
        elif mat is not None and mat.is_file():
            videos.append(Video.from_file(path, masks=MatMasks(mat)))
        else:
            videos.append(Video.from_file(path))
    return videos


def video_files(folder: str | Path) -> list[Path]:
    """The video files directly in ``folder``, in natural name order."""
    return image_files(folder, VIDEO_EXTENSIONS)


__all__ = [
    "ANOMALY_KINDS",
    "ArrayFrames",
    "ClipDataset",
    "FolderFrames",
    "MatMasks",
    "Video",
    "VideoFileFrames",
    "avenue",
    "clip_starts",
    "image_files",
    "resize_clip",
    "ucsd_ped2",
    "video_files",
]
