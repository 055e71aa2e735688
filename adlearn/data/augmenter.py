"""Synthetic anomalies painted onto normal images
(reference: the DRÆM-style ``anomalib.data.utils.augmenter.Augmenter`` and ``make_synthetic_dataset``).

DRÆM (and DSR's third phase) never see a real defect while training. Instead, every normal
training image is, with probability ``p_anomalous``, given a fake one:

1. **Where** — a Perlin-noise blob mask. The noise scale along each axis is ``2**k`` with ``k``
   drawn from {0, ..., 5} (large smooth blobs to small speckles), the noise is rotated by a random
   angle in [-90°, 90°], and the mask is ``noise > 0.5``.
2. **What** — a texture: a random image from ``anomaly_source_path`` (the DRÆM paper uses the
   DTD texture dataset) or, without a folder, a colourful Perlin texture. Three randomly chosen
   simple augmentations change its look (see `TEXTURE_AUGMENTATIONS`; the reference picks 3 of
   10 — we keep 7 easy-to-read ones and leave out sharpness, hue/saturation, equalize and affine
   rotation).
3. **How strongly** — an opacity ``beta`` (fixed, or uniform in a ``(low, high)`` range, per
   image)::

       augmented = image * (1 - m) + beta * texture * m + (1 - beta) * image * m

So inside the mask the texture shows through with opacity ``beta``; outside nothing changes.

`make_synthetic_dataset` uses the same generator (``p_anomalous=1``, faint ``beta``) to turn a
set of normal images into a labelled test set with masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from adlearn.data.datasets import ImageDataset, PathLike, Sample, load_image, samples_from
from adlearn.data.errors import DataError
from adlearn.data.perlin import fractal_perlin, perlin_at, random_gradients
from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

Beta = float | tuple[float, float]


# --------------------------------------------------------------------------- texture augmentations
# Each takes a texture (3, H, W) in [0, 1] and a numpy Generator, and returns a texture in [0, 1].
def _gamma_contrast(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return t.clamp_min(1e-6) ** float(rng.uniform(0.5, 2.0))


def _multiply_brightness(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return (t * float(rng.uniform(0.8, 1.2))).clamp(0, 1)


def _add_brightness(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return (t + float(rng.uniform(-0.12, 0.12))).clamp(0, 1)


def _solarize(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return torch.where(t >= 0.5, 1.0 - t, t)


def _posterize(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    levels = 2 ** int(rng.integers(2, 5))  # keep 2-4 bits per channel
    return torch.floor(t * (levels - 1) + 0.5) / (levels - 1)


def _invert(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return 1.0 - t


def _autocontrast(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    low = t.amin(dim=(1, 2), keepdim=True)
    high = t.amax(dim=(1, 2), keepdim=True)
    return (t - low) / (high - low).clamp_min(1e-6)


TEXTURE_AUGMENTATIONS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "gamma_contrast": _gamma_contrast,
    "multiply_brightness": _multiply_brightness,
    "add_brightness": _add_brightness,
    "solarize": _solarize,
    "posterize": _posterize,
    "invert": _invert,
    "autocontrast": _autocontrast,
}


def _check_beta(beta: Beta) -> tuple[float, float]:
    low, high = (beta, beta) if isinstance(beta, (int, float)) else tuple(beta)
    if not 0.0 <= low <= high <= 1.0:
        raise DataError(f"beta must be a float in [0, 1] or a (low, high) range inside [0, 1], got {beta!r}")
    return float(low), float(high)


class PerlinAnomalyGenerator:
    """DRÆM-style synthetic anomalies: Perlin masks filled with a blended texture ("Augmenter").

    Args:
        anomaly_source_path: optional folder of texture images (e.g. DTD). ``None``: Perlin
            textures.
        p_anomalous: probability that an image of the batch gets an anomaly.
        beta: texture opacity, a float or a ``(low, high)`` range drawn per image.
        seed: seed of the generator's random numbers (``None``: different every run).
        threshold: the noise level above which a pixel belongs to the mask (0.5 as in DRÆM).

    Calling it on a batch ``(B, 3, H, W)`` returns ``(augmented (B, 3, H, W), masks (B, 1, H, W))``.

    Departure from the reference: when an image is picked to be anomalous, a mask that came out
    empty is redrawn (up to 20 times), so "picked" really means "has a defect".
    """

    max_scale_exponent = 5  # noise scales 2**0 .. 2**5 lattice cells per axis

    def __init__(
        self,
        anomaly_source_path: PathLike | None = None,
        p_anomalous: float = 0.5,
        beta: Beta = (0.2, 1.0),
        seed: int | None = None,
        threshold: float = 0.5,
    ) -> None:
        if not 0.0 <= p_anomalous <= 1.0:
            raise DataError(f"p_anomalous must be in [0, 1], got {p_anomalous}")
        self.p_anomalous = float(p_anomalous)
        self.beta = _check_beta(beta)
        self.threshold = float(threshold)
        self.rng = np.random.default_rng(seed)
        self.texture_paths: list[Path] = []
        if anomaly_source_path is not None:
            root = Path(anomaly_source_path).expanduser()
            if not root.is_dir():
                raise DataError(
                    f"anomaly_source_path {root} is not a folder; pass a folder of "
                    f"texture images (e.g. DTD) or None for Perlin textures"
                )
            # DTD keeps its images in one folder per texture class, so search recursively
            self.texture_paths = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
            )
            if not self.texture_paths:
                raise DataError(f"no images found under anomaly_source_path {root}")

    # ------------------------------------------------------------------ masks
    def generate_mask(self, height: int, width: int, ensure_nonempty: bool = False) -> np.ndarray:
        """One rotated, thresholded Perlin mask ``(H, W)`` of float32 0/1 values."""
        for _ in range(20 if ensure_nonempty else 1):
            mask = self._perlin_mask(height, width)
            if mask.any() or not ensure_nonempty:
                return mask
        # a tiny chance remains that every try was empty; fall back to a central blob
        yy, xx = np.mgrid[0:height, 0:width]
        return (((yy - height / 2) / (height / 8)) ** 2 + ((xx - width / 2) / (width / 8)) ** 2 <= 1).astype(np.float32)

    def _perlin_mask(self, height: int, width: int) -> np.ndarray:
        res_y = 2 ** int(self.rng.integers(0, self.max_scale_exponent + 1))
        res_x = 2 ** int(self.rng.integers(0, self.max_scale_exponent + 1))
        gradients = random_gradients((res_y, res_x), self.rng)
        angle = math.radians(self.rng.uniform(-90.0, 90.0))
        # rotate the sampling grid about the image centre instead of rotating an image
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        cy, cx = (height - 1) / 2, (width - 1) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        ry = cy + (yy - cy) * cos - (xx - cx) * sin
        rx = cx + (yy - cy) * sin + (xx - cx) * cos
        noise = perlin_at(gradients, ry * res_y / height, rx * res_x / width)  # (H, W)
        return (noise > self.threshold).astype(np.float32)

    # --------------------------------------------------------------- textures
    def generate_texture(self, height: int, width: int) -> torch.Tensor:
        """An augmented texture ``(3, H, W)`` in [0, 1]."""
        if self.texture_paths:
            path = self.texture_paths[int(self.rng.integers(len(self.texture_paths)))]
            image = load_image(path).resize((width, height))
            texture = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
            texture = texture.permute(2, 0, 1).contiguous()  # (3, H, W)
        else:
            res = 2 ** int(self.rng.integers(1, 5))
            channels = [0.5 + 0.5 * fractal_perlin((height, width), res, 3, rng=self.rng) for _ in range(3)]
            texture = torch.from_numpy(np.stack(channels))  # (3, H, W)
        names = list(TEXTURE_AUGMENTATIONS)
        for index in self.rng.choice(len(names), size=3, replace=False):
            texture = TEXTURE_AUGMENTATIONS[names[index]](texture, self.rng)
        return texture.float().clamp(0, 1)

    def _draw_beta(self) -> float:
        low, high = self.beta
        return low if low == high else float(self.rng.uniform(low, high))

    # ------------------------------------------------------------------ batch
    def __call__(self, batch: torch.Tensor, normalized: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add anomalies to some images of ``batch`` (B, 3, H, W).

        ``normalized`` says whether the batch is ImageNet-normalized (the dataset default) or in
        [0, 1]; ``None`` guesses from the values (anything outside [0, 1] means normalized). The
        texture is brought into the same space before blending.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DataError(f"expected a batch of shape (B, 3, H, W), got {tuple(batch.shape)}")
        if normalized is None:
            normalized = bool(batch.min() < 0 or batch.max() > 1)
        batch_size, _, height, width = batch.shape
        augmented = batch.clone()
        masks = torch.zeros(batch_size, 1, height, width, dtype=batch.dtype, device=batch.device)
        for i in range(batch_size):
            if self.rng.random() >= self.p_anomalous:
                continue  # this image stays normal: zero perturbation, zero mask
            mask = torch.from_numpy(self.generate_mask(height, width, ensure_nonempty=True))
            texture = self.generate_texture(height, width)  # (3, H, W) in [0, 1]
            if normalized:
                mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
                std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
                texture = (texture - mean) / std
            m = mask.to(batch)[None]  # (1, H, W)
            texture = texture.to(batch)
            beta = self._draw_beta()
            image = batch[i]
            augmented[i] = image * (1 - m) + beta * texture * m + (1 - beta) * image * m
            masks[i, 0] = m[0]
        return augmented, masks

    augment_batch = __call__  # the reference's method name

    def __repr__(self) -> str:
        source = f"{len(self.texture_paths)} texture images" if self.texture_paths else "Perlin"
        return f"PerlinAnomalyGenerator(textures={source}, p_anomalous={self.p_anomalous}, beta={self.beta})"


# --------------------------------------------------------------------------- labelled test set
def make_synthetic_dataset(
    source_samples: ImageDataset | Iterable[Sample | PathLike],
    image_dir: PathLike,
    mask_dir: PathLike,
    anomalous_ratio: float = 0.5,
    seed: int = 0,
    anomaly_source_path: PathLike | None = None,
    beta: Beta = (0.01, 0.2),
    transform: ImageTransform | None = None,
) -> ImageDataset:
    """Turn normal images into a labelled test set: some stay normal, some get synthetic defects.

    ``int(anomalous_ratio * n)`` of the ``n`` source images (chosen with ``seed``) are copied
    with a `PerlinAnomalyGenerator` anomaly (``p_anomalous=1``, faint ``beta`` as in the
    reference) into ``image_dir`` as ``000.png, 001.png, ...``, with their masks (0/255) in
    ``mask_dir`` as ``000_mask.png, ...``. The others are kept, unchanged, as normal samples.

    Differences from anomalib's function of the same name:

    * ``source_samples`` is one of our datasets, a list of `Sample` records, or a list of image
      paths — not a pandas DataFrame (adlearn does not depend on pandas).
    * It returns an `ImageDataset` (normal samples first, then the anomalous ones, whose
      ``defect_type`` is ``"synthetic"``); its ``.samples`` list plays the DataFrame's role.
    * Missing output folders are created instead of raising ``NotADirectoryError``.
    * The textures default to Perlin noise rather than the DTD folder, which is not shipped.

    Raises `DataError` if a source sample is already anomalous or the ratio is outside [0, 1].
    """
    if not 0.0 <= anomalous_ratio <= 1.0:
        raise DataError(f"anomalous_ratio must be in [0, 1], got {anomalous_ratio}")
    samples = samples_from(source_samples)
    if not samples:
        raise DataError("source_samples is empty; pass at least one normal image")
    anomalous = [s.image_path for s in samples if s.label != 0]
    if anomalous:
        raise DataError(
            f"make_synthetic_dataset needs normal images only, but {len(anomalous)} "
            f"source samples are anomalous, e.g. {anomalous[0]}; use the train split"
        )
    image_dir, mask_dir = Path(image_dir).expanduser(), Path(mask_dir).expanduser()
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    n_anomalous = int(anomalous_ratio * len(samples))
    picked = sorted(rng.choice(len(samples), size=n_anomalous, replace=False).tolist())
    generator = PerlinAnomalyGenerator(anomaly_source_path, p_anomalous=1.0, beta=beta, seed=int(rng.integers(2**31)))
    digits = max(3, len(str(max(n_anomalous - 1, 0))))
    picked_set = set(picked)
    result = [s for i, s in enumerate(samples) if i not in picked_set]
    for number, index in enumerate(picked):
        result.append(
            _write_anomalous_copy(
                samples[index].image_path,
                generator,
                image_dir / f"{number:0{digits}d}.png",
                mask_dir / f"{number:0{digits}d}_mask.png",
            )
        )
    return ImageDataset(result, transform)


def _write_anomalous_copy(source: Path, generator: PerlinAnomalyGenerator, image_path: Path, mask_path: Path) -> Sample:
    """Paint one synthetic anomaly onto ``source`` and write the image and its 0/255 mask."""
    from PIL import Image

    array = np.asarray(load_image(source), dtype=np.float32) / 255.0  # (H, W, 3)
    batch = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
    augmented, mask = generator(batch, normalized=False)
    out = (augmented[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(out).save(image_path)
    Image.fromarray((mask[0, 0].numpy() > 0).astype(np.uint8) * 255).save(mask_path)
    return Sample(image_path, 1, "synthetic", mask_path)


# --------------------------------------------------------------------------- offline texture sources
# The photographs scikit-image ships in its wheel (no download): its three texture images, then other
# photos whose surfaces make varied "foreign" patches. DRÆM's paper uses the DTD texture dataset
# (`data_scripts/download_dtd.py` fetches it for users who are online).
SKIMAGE_TEXTURES = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "moon",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cell",
    "colorwheel",
    "clock",
    "page",
    "text",
)


def skimage_textures(folder: PathLike | None = None) -> Path:
    """A folder of scikit-image's sample photos as RGB PNGs (written once; default under `cache_dir`).

    Pass it as ``anomaly_source_path``; DRÆM's ``anomaly_source="skimage"`` does.
    """
    import skimage
    import skimage.data
    from PIL import Image

    from adlearn.cache import cache_dir

    folder = Path(folder) if folder is not None else cache_dir() / "textures" / f"skimage-{skimage.__version__}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_TEXTURES:
        path = folder / f"{name}.png"
        if path.is_file():
            continue
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        image = Image.fromarray(pixels).convert("RGB")
        partial = path.with_name(path.name + ".part")  # not an image suffix: never read as a texture
        image.save(partial, format="PNG")
        partial.replace(path)  # never a half-written texture
    return folder
