"""Datasets: turn folders of images (and masks) into the dict items every model consumes.

Each item is a plain ``dict`` so PyTorch's default ``DataLoader`` collate works unchanged::

    {"image": (3, H, W) float tensor,   # transformed, ImageNet-normalized by default
     "mask": (H, W) float tensor,       # 1 = defect pixel, all zeros for normal images
     "label": int,                      # 0 normal, 1 anomalous
     "defect_type": str,                # "good" for normal images
     "image_path": str}

Three classes share one base, `ImageDataset`, which only needs a list of `Sample` records:

* `MVTecDataset` reads the MVTec AD layout (also used by VisA after conversion and by the embedded
  synthetic dataset)::

      <root>/<category>/train/good/*.png
      <root>/<category>/test/<defect>/*.png              # "good" for normal test images
      <root>/<category>/ground_truth/<defect>/<stem>_mask.png

* `FolderDataset` reads any folder of normal images, plus optional folders of anomalous images
  and masks.

Design choices worth knowing:

* Order is deterministic: folders and files are sorted by name.
* Nothing is silently dropped. A folder that holds something other than images, an anomalous
  image without a mask, or an empty folder is an error whose message says what to do. Hidden
  files (names starting with ``.``) are the only exception; they are never data.
* Files are checked lazily: a corrupt image raises a `DataError` naming the file when it is
  loaded, not at construction, so building a dataset of thousands of images stays instant.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from adlearn.data.errors import DataError
from adlearn.data.layout import find_mask, list_images, mvtec_categories
from adlearn.data.transforms import ImageTransform

PathLike = str | Path

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One row of a dataset's table: where the image is and what we know about it."""

    image_path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images
    mask_path: Path | None = None  # None: no defect pixels known (all-zero mask)


# --------------------------------------------------------------------------- loading
def load_image(path: PathLike) -> Image.Image:
    """Open an image file as RGB; a decoding failure becomes a `DataError` naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError as error:
        raise DataError(f"image file {path} does not exist (was it moved or deleted?)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"cannot read image file {path}: {error}. The file is corrupt or not an "
            f"image; re-download the dataset or delete this file."
        ) from error


def load_mask(path: PathLike) -> Image.Image:
    """Open a mask file (kept in its own mode, e.g. 8-bit ``L``), with the same clear errors."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("L") if image.mode not in ("L", "1", "I", "I;16", "F") else image
    except FileNotFoundError as error:
        raise DataError(f"mask file {path} does not exist (was it moved or deleted?)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"cannot read mask file {path}: {error}. The file is corrupt or not an "
            f"image; re-download the dataset or delete this file."
        ) from error


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    return split


# --------------------------------------------------------------------------- base dataset
class ImageDataset(Dataset):
    """A dataset over a list of `Sample` records; subclasses only decide which samples.

    Args:
        samples: the table of images (paths, labels, defect types, mask paths).
        transform: an `ImageTransform`; ``None`` means ``ImageTransform()`` (256 px, normalized).
    """

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform | None = None) -> None:
        self.samples: list[Sample] = list(samples)
        self.transform = transform if transform is not None else ImageTransform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pil_image = load_image(sample.image_path)
        image = self.transform(pil_image)  # (3, H, W)
        if sample.mask_path is not None:
            pil_mask = load_mask(sample.mask_path)
            if pil_mask.size != pil_image.size:  # a mask of another size belongs to another image
                raise DataError(
                    f"mask {sample.mask_path} is {pil_mask.size[0]}x{pil_mask.size[1]} "
                    f"but image {sample.image_path} is {pil_image.size[0]}x"
                    f"{pil_image.size[1]}; check that they belong together"
                )
            mask = self.transform.mask(pil_mask)  # (H, W)
        else:
            mask = torch.zeros(image.shape[-2:], dtype=torch.float32)  # (H, W)
        return {
            "image": image,
            "mask": mask,
            "label": int(sample.label),
            "defect_type": sample.defect_type,
            "image_path": str(sample.image_path),
        }

    @property
    def labels(self) -> list[int]:
        """Labels of all samples, in order (no image is loaded)."""
        return [s.label for s in self.samples]

    @property
    def defect_types(self) -> list[str]:
        return [s.defect_type for s in self.samples]

    def counts(self) -> dict[str, int]:
        """Number of images per defect type, e.g. ``{"good": 20, "crack": 10}``."""
        return dict(sorted(Counter(self.defect_types).items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images: {self.counts()})"


# --------------------------------------------------------------------------- MVTec layout
class MVTecDataset(ImageDataset):
    """One category of a dataset in the MVTec AD layout.

    Args:
        root: folder holding the category folders (e.g. ``.../mvtec_ad``).
        category: category name, e.g. ``"bottle"``.
        split: ``"train"`` (normal images from ``train/good``) or ``"test"`` (every folder of
            ``test/``; ``good`` is normal, any other folder is a defect type with masks in
            ``ground_truth/<defect>/``).
        transform: an `ImageTransform`; ``None`` means ``ImageTransform()``.

    Example::

        >>> ds = MVTecDataset(synthetic_root(), "ring", split="test")
        >>> item = ds[0]; item["image"].shape, item["mask"].shape, item["label"]
    """

    def __init__(
        self, root: PathLike, category: str, split: str = "train", transform: ImageTransform | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.category = category
        self.split = _check_split(split)
        category_dir = self._category_dir()
        samples = _mvtec_train_samples(category_dir) if split == "train" else _mvtec_test_samples(category_dir)
        super().__init__(samples, transform)

    def _category_dir(self) -> Path:
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root} does not exist. Download MVTec AD with "
                f"`python data_scripts/download_mvtec.py --dest DIR` and pass DIR, or use the "
                f"embedded dataset: adlearn.data.synthetic_root()"
            )
        category_dir = self.root / self.category
        if not category_dir.is_dir():
            found = mvtec_categories(self.root)
            listing = ", ".join(found) if found else "none (is this the right folder?)"
            raise DataError(f"category {self.category!r} not found in {self.root}. Categories found there: {listing}")
        return category_dir

    def __repr__(self) -> str:
        return f"MVTecDataset(category={self.category!r}, split={self.split!r}, {len(self)} images: {self.counts()})"


def _mvtec_train_samples(category_dir: Path) -> list[Sample]:
    train_dir = category_dir / "train"
    good_dir = train_dir / "good"
    if not good_dir.is_dir():
        raise DataError(f"{good_dir} does not exist: an MVTec category needs its normal training images in train/good/")
    others = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and p.name != "good")
    if others:
        # MVTec trains on normal images only; say so rather than pretend the folders are not there
        warnings.warn(f"{train_dir} has folders {others} besides good/; only good/ is used for training", stacklevel=3)
    return [Sample(path, 0, "good") for path in list_images(good_dir, "MVTec train folder")]


def _mvtec_test_samples(category_dir: Path) -> list[Sample]:
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DataError(
            f"{test_dir} does not exist: an MVTec category needs a test/ folder with "
            f"one subfolder per defect type (and good/)"
        )
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not defect_dirs:
        raise DataError(f"{test_dir} has no subfolders; expected test/good/ and test/<defect>/")
    samples: list[Sample] = []
    missing_masks: list[str] = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        images = list_images(defect_dir, "MVTec test folder")
        if defect == "good":
            samples += [Sample(path, 0, "good") for path in images]
            continue
        mask_dir = category_dir / "ground_truth" / defect
        for path in images:
            mask = find_mask(mask_dir, path) if mask_dir.is_dir() else None
            if mask is None:
                missing_masks.append(f"{path} (expected {mask_dir / (path.stem + '_mask.png')})")
            samples.append(Sample(path, 1, defect, mask))
    if missing_masks:
        raise DataError(
            f"{len(missing_masks)} anomalous test images have no mask: "
            + "; ".join(missing_masks[:3])
            + (" ..." if len(missing_masks) > 3 else "")
            + ". Restore ground_truth/<defect>/<stem>_mask.png or remove the images."
        )
    return samples


# --------------------------------------------------------------------------- any folders
class FolderDataset(ImageDataset):
    """A dataset from plain folders: normal images, and optionally anomalous images and masks.

    Args:
        normal_dir: folder of normal (defect-free) images.
        abnormal_dir: folder of anomalous images (test split only); its folder name becomes the
            ``defect_type``.
        mask_dir: masks of the anomalous images, matched by file stem: ``<stem>.png`` or
            ``<stem>_mask.png``. When given, every anomalous image needs one. Without it the masks
            are all zero and ``has_masks`` is ``False`` (so pixel metrics make no sense).
        split: ``"train"`` or ``"test"``.
        transform: an `ImageTransform`; ``None`` means ``ImageTransform()``.
        normal_test_dir: folder of normal test images. If not given, a ``test_split_ratio`` share
            of ``normal_dir`` (chosen with ``seed``, the same for both splits) is held out for
            the test split and left out of the train split.
        test_split_ratio: share of ``normal_dir`` held out for testing when there is no
            ``normal_test_dir`` (0 keeps every normal image for training).
        seed: seed of the hold-out choice.
    """

    def __init__(
        self,
        normal_dir: PathLike,
        abnormal_dir: PathLike | None = None,
        mask_dir: PathLike | None = None,
        split: str = "train",
        transform: ImageTransform | None = None,
        normal_test_dir: PathLike | None = None,
        test_split_ratio: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.split = _check_split(split)
        if not 0.0 <= test_split_ratio < 1.0:
            raise DataError(f"test_split_ratio must be in [0, 1), got {test_split_ratio}")
        self.normal_dir = Path(normal_dir).expanduser()
        self.abnormal_dir = None if abnormal_dir is None else Path(abnormal_dir).expanduser()
        self.mask_dir = None if mask_dir is None else Path(mask_dir).expanduser()
        self.has_masks = self.mask_dir is not None or self.abnormal_dir is None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder {self.mask_dir} does not exist; check the path")

        normal = list_images(self.normal_dir, "normal image folder")
        if normal_test_dir is not None:
            train_normal = normal
            test_normal = list_images(normal_test_dir, "normal test folder")
        else:
            train_normal, test_normal = _hold_out(normal, test_split_ratio, seed)

        if split == "train":
            samples = [Sample(path, 0, "good") for path in train_normal]
        else:
            samples = [Sample(path, 0, "good") for path in test_normal]
            samples += self._abnormal_samples()
            if not samples:
                raise DataError(
                    "the test split is empty: pass abnormal_dir and/or normal_test_dir, or a test_split_ratio > 0"
                )
        super().__init__(samples, transform)

    def _abnormal_samples(self) -> list[Sample]:
        if self.abnormal_dir is None:
            return []
        defect = self.abnormal_dir.name
        samples, missing = [], []
        for path in list_images(self.abnormal_dir, "abnormal image folder"):
            mask = find_mask(self.mask_dir, path) if self.mask_dir is not None else None
            if self.mask_dir is not None and mask is None:
                missing.append(path.name)
            samples.append(Sample(path, 1, defect, mask))
        if missing:
            raise DataError(
                f"{len(missing)} anomalous images have no mask in {self.mask_dir} "
                f"(looked for <stem>.png and <stem>_mask.png): {missing[:5]}. Add the "
                f"masks, or pass mask_dir=None for image-level labels only."
            )
        return samples


def _hold_out(paths: list[Path], ratio: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split sorted paths into (train, test) with a seeded shuffle; both keep sorted order."""
    n_test = int(round(ratio * len(paths)))
    if n_test >= len(paths):
        raise DataError(f"test_split_ratio={ratio} leaves no training images out of {len(paths)}")
    chosen = set(np.random.default_rng(seed).permutation(len(paths))[:n_test].tolist())
    train = [p for i, p in enumerate(paths) if i not in chosen]
    test = [p for i, p in enumerate(paths) if i in chosen]
    return train, test


def samples_from(source: ImageDataset | Iterable[Sample | PathLike]) -> list[Sample]:
    """Accept a dataset, a list of `Sample` records, or a list of image paths (taken as normal)."""
    if isinstance(source, ImageDataset):
        return list(source.samples)
    samples = []
    for item in source:
        samples.append(item if isinstance(item, Sample) else Sample(Path(item), 0, "good"))
    return samples
