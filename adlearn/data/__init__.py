"""The data layer: datasets, transforms, synthetic data and anomaly generators.

Everything is resolved lazily, so ``import adlearn.data`` is instant and pulls in neither torch
models nor timm; ``from adlearn.data import MVTecDataset`` works as usual.

* `MVTecDataset`, `FolderDataset` — dict items ``{"image", "mask", "label", "defect_type",
  "image_path"}`` (see ``docs/design.md``).
* `ImageTransform` — resize / center-crop / ImageNet normalization, applied alike to masks.
* `synthetic_root`, `generate_synthetic_dataset`, `SYNTHETIC_CATEGORIES` — the embedded dataset.
* `random_2d_perlin`, `PerlinAnomalyGenerator`, `make_synthetic_dataset` — synthetic anomalies.
* `digit_images`, `one_class_split` — scikit-learn's digits as a real one-class problem.
* `hold_out`, `SyntheticAnomalies` — validation data for early stopping, from normal images only.
* `NaturalImageCrops`, `load_natural_images` — random crops of the photographs scikit-image,
  scikit-learn and matplotlib ship (EfficientAD's stand-in for ImageNet).
* `Video`, `ClipDataset`, `resize_clip` — videos (in memory, a folder of frames, a video file) cut
  into clips of consecutive frames; `ucsd_ped2`, `avenue` read the two public benchmarks;
  `synthetic_surveillance` draws the embedded surveillance videos (see ``docs/design.md``).
* `DataError` — raised for bad input, with a message that says how to fix it.
"""

from __future__ import annotations

from adlearn._lazy import lazy_exports

_LAZY = {
    # errors
    "DataError": "errors",
    # transforms
    "ImageTransform": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    # datasets
    "Sample": "datasets",
    "ImageDataset": "datasets",
    "MVTecDataset": "datasets",
    "FolderDataset": "datasets",
    "mvtec_categories": "layout",
    "IMAGE_EXTENSIONS": "layout",
    # the embedded synthetic dataset
    "SYNTHETIC_CATEGORIES": "synthetic",
    "synthetic_root": "synthetic",
    "generate_synthetic_dataset": "synthetic",
    "synth_command": "synthetic",
    # Perlin noise and synthetic anomalies
    "random_2d_perlin": "perlin",
    "PerlinAnomalyGenerator": "augmenter",
    "make_synthetic_dataset": "augmenter",
    "skimage_textures": "augmenter",
    # a real one-class problem: scikit-learn's digits
    "digit_images": "digits",
    "one_class_split": "digits",
    "OneClassSplit": "digits",
    # validation without the test set
    "hold_out": "validation",
    "SyntheticAnomalies": "validation",
    "TensorImages": "validation",
    # natural photographs shipped by installed wheels (EfficientAD's teacher and penalty images)
    "NaturalImageCrops": "natural_images",
    "load_natural_images": "natural_images",
    "natural_image_names": "natural_images",
    # videos: clips of consecutive frames, public layouts, the synthetic surveillance videos
    "Video": "video",
    "ClipDataset": "video",
    "resize_clip": "video",
    "ucsd_ped2": "video",
    "avenue": "video",
    "ANOMALY_KINDS": "video",
    "synthetic_surveillance": "synthetic_video",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
