"""Natural photographs that the installed wheels ship, as an endless stream of random crops.

EfficientAD (Batzner et al., WACV 2024) needs generic natural images twice: to distil its teacher
from an ImageNet network, and for the student's *penalty* loss (Sec. 3.2: the student must not
imitate the teacher on images unlike the training data). The paper uses ImageNet (anomalib
downloads Imagenette). Offline, we use the sample photographs that scikit-image, scikit-learn and
matplotlib install with themselves — about twenty pictures of people, animals, objects, textures
and scenes — and multiply them by random crops at random scales, flips and 10 % grayscale.

    stream = NaturalImageCrops(size=256, seed=0)
    batch = stream.sample(4)            # (4, 3, 256, 256), ImageNet-normalised like ImageTransform's
    natural_image_names()               # which files were found

A crop covers between ``min_scale`` and all of the shorter side of a photograph, anywhere in it,
and is resized (bilinear, antialiased) to ``size``: the pool of distinct views is effectively
unlimited even though the photographs are few.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# (package, path inside it): colour and grey photographs and natural textures (no drawings, text,
# microscopy or charts).
_SKIMAGE = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "camera.png",
    "moon.png",
    "coins.png",
    "gravel.png",
    "brick.png",
    "grass.png",
    "retina.jpg",
)
_SKLEARN = ("china.jpg", "flower.jpg")
_MATPLOTLIB = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


def _candidate_files() -> list[Path]:
    files = []
    try:
        import skimage.data

        files += [Path(skimage.data.__file__).parent / name for name in _SKIMAGE]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        files += [Path(sklearn.datasets.__file__).parent / "images" / name for name in _SKLEARN]
    except ImportError:
        pass
    try:
        import matplotlib

        files += [Path(matplotlib.get_data_path()) / "sample_data" / name for name in _MATPLOTLIB]
    except ImportError:
        pass
    return [f for f in files if f.is_file()]


def natural_image_names() -> list[str]:
    """The file names of the photographs found (in a fixed order)."""
    return [f.name for f in _candidate_files()]


@functools.lru_cache(maxsize=1)
def load_natural_images() -> tuple[torch.Tensor, ...]:
    """Every photograph found, as a float tensor (3, H, W) in [0, 1] (grey ones repeated to RGB)."""
    from PIL import Image

    images = []
    for path in _candidate_files():
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    if not images:
        raise RuntimeError(
            "no natural images found: they come with scikit-image, scikit-learn and matplotlib "
            "(pip install scikit-image scikit-learn matplotlib)"
        )
    return tuple(images)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (the weights torchvision uses), repeated over the three channels. (B, 3, H, W) in [0, 1] -> (B, 3, H, W)"""
    weights = images.new_tensor([0.2989, 0.587, 0.114])[None, :, None, None]
    return (images * weights).sum(1, keepdim=True).expand_as(images)


class NaturalImageCrops:
    """Random views of the natural photographs: crop, resize, flip, sometimes grayscale.

    Args:
        size: output side (int) or (height, width).
        seed: the stream's own random generator (the same seed gives the same crops).
        min_scale: smallest crop side, as a fraction of the photograph's shorter side.
        grayscale: probability of a grey view. normalize: ImageNet-normalise (like `ImageTransform`).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        seed: int = 0,
        min_scale: float = 0.25,
        grayscale: float = 0.1,
        normalize: bool = True,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_scale, self.grayscale, self.normalize = min_scale, grayscale, normalize
        self.generator = torch.Generator().manual_seed(seed)
        self.images = load_natural_images()

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def view(self) -> torch.Tensor:
        """One random view, (3, H, W) in [0, 1]."""
        image = self.images[int(torch.randint(len(self.images), (), generator=self.generator))]
        _, height, width = image.shape
        aspect = self.size[1] / self.size[0]
        side = min(height, width / aspect)
        crop_h = max(8, int(side * (self.min_scale + (1 - self.min_scale) * self._uniform())))
        crop_w = max(8, min(width, int(crop_h * aspect)))
        top = int(self._uniform() * (height - crop_h + 1))
        left = int(self._uniform() * (width - crop_w + 1))
        crop = image[None, :, top : top + crop_h, left : left + crop_w]
        crop = F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self._uniform() < 0.5:
            crop = crop.flip(-1)
        if self._uniform() < self.grayscale:
            crop = to_grayscale(crop)
        return crop[0].clamp(0, 1)

    def sample(self, batch_size: int = 1) -> torch.Tensor:
        """(batch_size, 3, H, W): ImageNet-normalised views (or in [0, 1] with ``normalize=False``)."""
        batch = torch.stack([self.view() for _ in range(batch_size)])
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
            std = torch.tensor(IMAGENET_STD)[None, :, None, None]
            batch = (batch - mean) / std
        return batch
