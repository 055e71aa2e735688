"""Download and unpack the two public video anomaly benchmarks into the layouts `ucsd_ped2` and `avenue` read.

The archives are fetched with `adlearn.data.download.download_file` (a published SHA-256,
resumable ``.part`` files) and unpacked with `safe_extract` (every member checked before
anything is written), exactly as MVTec AD's.

* **UCSD Ped2** (Mahadevan et al., CVPR 2010): ``UCSD_Anomaly_Dataset.tar.gz`` (Ped1 and Ped2)
  unpacks to ``UCSD_Anomaly_Dataset.v1p2/UCSDped2/{Train,Test}/``; test masks are
  ``Test/Test001_gt/*.bmp``. `prepare_ucsd_ped2` returns the folder holding ``UCSDped2/``.
* **CUHK Avenue** (Lu, Shi & Jia, ICCV 2013): ``Avenue_Dataset.zip`` (``training_videos/01.avi``
  ..., ``testing_videos/01.avi`` ...) and the annotations ``ground_truth_demo.zip``
  (``testing_label_mask/1_label.mat``, one ``volLabel`` cell of per-frame masks per test video).
  `prepare_avenue` unpacks both into one folder and, unless told not to, converts each ``.mat``
  into a folder ``1_label/`` of 0/255 PNG masks, one per frame (read frame by frame, instead of a
  whole video's masks at once).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from adlearn.data.download import obtain_archive, safe_extract
from adlearn.data.errors import DataError

PathLike = str | Path

UCSD_URL = "http://www.svcl.ucsd.edu/projects/anomaly/UCSD_Anomaly_Dataset.tar.gz"
#: SHA-256 of UCSD_Anomaly_Dataset.tar.gz, as published by anomalib (``anomalib.data.datamodules.video.ucsd_ped``).
UCSD_SHA256: str | None = "2329af326951f5097fdd114c50e853957d3e569493a49d22fc082a9fd791915b"

AVENUE_URL = "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/Avenue_Dataset.zip"
#: SHA-256 of Avenue_Dataset.zip, as published by anomalib (``anomalib.data.datamodules.video.avenue``).
AVENUE_SHA256: str | None = "fc9cb8432a11ca79c18aa180c72524011411b69d3b0ff27c8816e41c0de61531"
AVENUE_LABELS_URL = "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/ground_truth_demo.zip"
#: SHA-256 of ground_truth_demo.zip (Avenue's pixel annotations), as published by anomalib (same module).
AVENUE_LABELS_SHA256: str | None = "60fec1728ec8f73a58aad3aeb5729d70a805a47e0b8eb4bf91ab67ef06386d77"


# =========================================================================== UCSD Ped2
def find_ucsd_root(folder: Path) -> Path:
    """The folder holding ``UCSDped2/``: ``folder`` itself or a folder below it."""
    for candidate in (folder, *sorted(p.parent for p in folder.rglob("UCSDped2"))):
        if (candidate / "UCSDped2" / "Train").is_dir() and (candidate / "UCSDped2" / "Test").is_dir():
            return candidate
    raise DataError(
        f"no UCSDped2/ folder with Train/ and Test/ found in {folder} after extraction; "
        "is this the right archive (UCSD_Anomaly_Dataset.tar.gz)?"
    )


def prepare_ucsd_ped2(
    dest: PathLike,
    archive: PathLike | None = None,
    url: str = UCSD_URL,
    sha256: str | None = UCSD_SHA256,
    progress: bool = True,
) -> Path:
    """Download (or take ``archive``), verify and extract UCSD Ped2; returns the folder holding ``UCSDped2/``."""
    from adlearn.data.video import ucsd_ped2

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    path = obtain_archive(url, dest, "UCSD_Anomaly_Dataset.tar.gz", archive, sha256, progress)
    print(f"extracting {path} into {dest} ...")
    safe_extract(path, dest)
    root = find_ucsd_root(dest)
    train, test = ucsd_ped2(root, "train"), ucsd_ped2(root, "test")
    anomalous = sum(int(v.frame_labels.sum()) for v in test)
    print(
        f"UCSD Ped2 in {root / 'UCSDped2'}: {len(train)} training videos, {len(test)} test videos "
        f"({anomalous} of {sum(v.n_frames for v in test)} test frames anomalous)"
    )
    return root


# =========================================================================== CUHK Avenue
def _lift(folder: Path, into: Path) -> None:
    """Move ``folder``'s children into ``into`` and remove it (an archive's wrapping folder)."""
    for child in sorted(folder.iterdir()):
        target = into / child.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(child), str(target))
    folder.rmdir()


def find_avenue_root(folder: Path) -> Path:
    """The folder holding ``training_videos/`` and ``testing_videos/``."""
    candidates = (folder, *sorted(p.parent for p in folder.rglob("testing_videos")))
    for candidate in candidates:
        if (candidate / "training_videos").is_dir() and (candidate / "testing_videos").is_dir():
            return candidate
    raise DataError(
        f"no training_videos/ and testing_videos/ found in {folder} after extraction; "
        "is this the right archive (Avenue_Dataset.zip)?"
    )


def convert_avenue_masks(label_dir: PathLike) -> int:
    """Write each ``N_label.mat`` of ``label_dir`` as a folder ``N_label/`` of 0/255 PNG masks
    (``0000.png``, ``0001.png``, ...). Returns the number of videos converted."""
    from adlearn.data.video import MatMasks

    label_dir = Path(label_dir)
    converted = 0
    for mat in sorted(label_dir.glob("*_label.mat")):
        masks = MatMasks(mat)
        folder = mat.with_suffix("")
        building = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        digits = max(4, len(str(len(masks) - 1)))
        for i in range(len(masks)):
            Image.fromarray((masks[i] * 255).astype(np.uint8)).save(building / f"{i:0{digits}d}.png")
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)
        converted += 1
    return converted


def prepare_avenue(
    dest: PathLike,
    archive: PathLike | None = None,
    annotations: PathLike | None = None,
    url: str = AVENUE_URL,
    sha256: str | None = AVENUE_SHA256,
    annotations_url: str = AVENUE_LABELS_URL,
    annotations_sha256: str | None = AVENUE_LABELS_SHA256,
    convert_masks: bool = True,
    progress: bool = True,
) -> Path:
    """Download (or take ``archive`` and ``annotations``), verify and extract CUHK Avenue into
    ``dest``: ``training_videos/``, ``testing_videos/`` and ``ground_truth_demo/testing_label_mask/``.
    Returns ``dest`` (what `avenue` takes as ``root``)."""
    from adlearn.data.video import avenue

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    videos = obtain_archive(url, dest, "Avenue_Dataset.zip", archive, sha256, progress)
    labels = obtain_archive(annotations_url, dest, "ground_truth_demo.zip", annotations, annotations_sha256, progress)
    for path in (videos, labels):
        print(f"extracting {path} into {dest} ...")
        safe_extract(path, dest)
    root = find_avenue_root(dest)
    if root != dest:  # the archive wraps everything in "Avenue Dataset/"
        _lift(root, dest)
    label_dir = next((p for p in sorted(dest.rglob("testing_label_mask")) if p.is_dir()), None)
    if label_dir is None:
        raise DataError(
            f"no testing_label_mask/ folder found in {dest} after extraction; "
            "is the annotations archive the right one (ground_truth_demo.zip)?"
        )
    if label_dir != dest / "ground_truth_demo" / "testing_label_mask":
        (dest / "ground_truth_demo").mkdir(exist_ok=True)
        shutil.move(str(label_dir), str(dest / "ground_truth_demo" / "testing_label_mask"))
        label_dir = dest / "ground_truth_demo" / "testing_label_mask"
    if convert_masks:
        count = convert_avenue_masks(label_dir)
        print(f"converted the masks of {count} test videos to PNG folders in {label_dir}")
    train, test = avenue(dest, "train"), avenue(dest, "test")
    anomalous = sum(int(v.frame_labels.sum()) for v in test)
    print(
        f"CUHK Avenue in {dest}: {len(train)} training videos, {len(test)} test videos "
        f"({anomalous} of {sum(v.n_frames for v in test)} test frames anomalous)"
    )
    return dest


__all__ = [
    "AVENUE_LABELS_SHA256",
    "AVENUE_LABELS_URL",
    "AVENUE_SHA256",
    "AVENUE_URL",
    "UCSD_SHA256",
    "UCSD_URL",
    "convert_avenue_masks",
    "prepare_avenue",
    "prepare_ucsd_ped2",
]
