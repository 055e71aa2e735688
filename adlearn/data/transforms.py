"""`ImageTransform`: the one preprocessing step every model expects.

Anomaly-detection models built on ImageNet backbones want images that are

1. resized to a fixed size (``image_size``: an int for a square, or ``(height, width)``),
2. optionally center-cropped (``center_crop``), and
3. normalized with the ImageNet channel mean and standard deviation.

Ground-truth masks must follow the *same* geometry, but they are label maps, not photographs: they
are resized with nearest-neighbour sampling (no blending of 0 and 1 into 0.5) and then binarized.

Only PIL, numpy and torch are used, so importing this module stays cheap (no torchvision).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adlearn.data.errors import DataError

#: ImageNet channel statistics (RGB), the ones every torchvision/timm backbone was trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageLike = Image.Image | np.ndarray | torch.Tensor
Size = int | tuple[int, int]


def _as_hw(size: Size, name: str) -> tuple[int, int]:
    """Turn ``256`` or ``(256, 320)`` into ``(height, width)``, rejecting nonsense early."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        hw = (int(size[0]), int(size[1]))
    else:
        raise DataError(f"{name} must be an int or a (height, width) pair, got {size!r}")
    if min(hw) < 1:
        raise DataError(f"{name} must be positive, got {size!r}")
    return hw


def _stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(3, 1, 1)
    return mean, std


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Map an RGB tensor in [0, 1] (``(3, H, W)`` or ``(B, 3, H, W)``) to ImageNet-normalized."""
    mean, std = _stats(image.device, image.dtype)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalization and clamp to [0, 1], ready for ``plt.imshow`` after a permute."""
    mean, std = _stats(image.device, image.dtype)
    return (image * std + mean).clamp(0.0, 1.0)


def _center_crop_box(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a centered crop (same rounding as torchvision, so results agree)."""
    top = int(round((height - crop[0]) / 2.0))
    left = int(round((width - crop[1]) / 2.0))
    return top, left


class ImageTransform:
    """Resize, optionally center-crop and ImageNet-normalize images; same geometry for masks.

    Args:
        image_size: output size of the resize, an int (square) or ``(height, width)``.
        center_crop: optional crop applied after the resize, an int or ``(height, width)``;
            it must fit inside ``image_size``.
        normalize: subtract ``IMAGENET_MEAN`` and divide by ``IMAGENET_STD`` (default). With
            ``False`` images stay in [0, 1].

    Calling the transform on an image (PIL image, ``(H, W, 3)`` uint8 array, or ``(3, H, W)``
    tensor in [0, 1]) returns a float tensor ``(3, h, w)``. ``transform.mask(m)`` returns a float
    tensor ``(h, w)`` with values in {0, 1}: any non-zero pixel of an integer mask (or > 0.5 for a
    float mask) is a defect, so masks stored as 0/255, 0/1 or as defect indices all work.
    """

    def __init__(self, image_size: Size = 256, center_crop: Size | None = None, normalize: bool = True) -> None:
        self.image_size = _as_hw(image_size, "image_size")
        self.center_crop = None if center_crop is None else _as_hw(center_crop, "center_crop")
        if self.center_crop is not None and (
            self.center_crop[0] > self.image_size[0] or self.center_crop[1] > self.image_size[1]
        ):
            raise DataError(
                f"center_crop {self.center_crop} does not fit inside image_size "
                f"{self.image_size}; use a crop no larger than the resized image"
            )
        self.normalize = bool(normalize)

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of what the transform returns."""
        return self.center_crop if self.center_crop is not None else self.image_size

    # ------------------------------------------------------------------ images
    def __call__(self, image: ImageLike) -> torch.Tensor:
        tensor = self._resize_image(image)  # (3, H, W) float in [0, 1]
        tensor = self._crop(tensor)
        return normalize(tensor) if self.normalize else tensor

    def _resize_image(self, image: ImageLike) -> torch.Tensor:
        height, width = self.image_size
        if isinstance(image, torch.Tensor):
            tensor = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
                raise DataError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
            tensor = tensor.expand(3, -1, -1)
            # antialias=True makes downscaling average like PIL's resize instead of skipping pixels
            return F.interpolate(
                tensor[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp(0.0, 1.0)
        pil = _to_pil(image).convert("RGB")
        pil = pil.resize((width, height), Image.BILINEAR)  # PIL takes (width, height)
        array = np.asarray(pil, dtype=np.float32) / 255.0  # (H, W, 3)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # (3, H, W)

    # ------------------------------------------------------------------- masks
    def mask(self, mask: ImageLike) -> torch.Tensor:
        """Resize (nearest), crop and binarize a mask: a float tensor ``(h, w)`` in {0, 1}."""
        height, width = self.image_size
        if isinstance(mask, torch.Tensor):
            values = mask.float().squeeze()
            if values.ndim != 2:
                raise DataError(f"expected a mask of shape (H, W), got {tuple(mask.shape)}")
            binary = (values > 0.5) if mask.is_floating_point() else (values > 0)
            resized = F.interpolate(binary.float()[None, None], size=(height, width), mode="nearest")[0, 0]
        else:
            pil = _to_pil(mask)
            if pil.mode not in ("L", "1", "I", "I;16", "F"):
                pil = pil.convert("L")
            pil = pil.resize((width, height), Image.NEAREST)
            values = np.asarray(pil)
            binary = values > (0.5 if values.dtype.kind == "f" else 0)
            resized = torch.from_numpy(binary.astype(np.float32))
        return self._crop(resized[None])[0]

    # backwards-friendly alias: some code reads better as transform.transform_mask(m)
    transform_mask = mask

    # ---------------------------------------------------------------- helpers
    def _crop(self, tensor: torch.Tensor) -> torch.Tensor:
        """Center-crop a ``(C, H, W)`` tensor if a crop was asked for."""
        if self.center_crop is None:
            return tensor
        top, left = _center_crop_box(tensor.shape[-2], tensor.shape[-1], self.center_crop)
        return tensor[..., top : top + self.center_crop[0], left : left + self.center_crop[1]]

    @staticmethod
    def denormalize(tensor: torch.Tensor) -> torch.Tensor:
        """Undo ImageNet normalization (``(3, H, W)`` or ``(B, 3, H, W)``), clamped to [0, 1]."""
        return denormalize(tensor)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, center_crop={self.center_crop}, normalize={self.normalize})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageTransform)
            and self.image_size == other.image_size
            and self.center_crop == other.center_crop
            and self.normalize == other.normalize
        )


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.dtype.kind == "f" and image.ndim == 3:
            # float RGB arrays are assumed to be in [0, 1]
            image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(image)
    raise DataError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")
