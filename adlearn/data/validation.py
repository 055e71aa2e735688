"""Validation data without touching the test set: hold out normal images, paste synthetic defects.

Early stopping needs images the model did not train on. In one-class anomaly detection the training
split holds only normal images, so the two honest sources are

* `hold_out(data, fraction)` — a seeded random share of the training images, set aside: the model's
  loss on them tells when it stops generalising (no labels needed);
* `SyntheticAnomalies(held_out)` — the same held-out images, every second one with a Perlin-noise
  defect pasted in (DRÆM's generator, `PerlinAnomalyGenerator`) and its exact mask: a labelled,
  pixel-level validation set made from normal images only;
* `SyntheticAnomalies(held_out, defects_per_image=k)` — *paired*: every held-out image once clean and
  ``k`` times with a different defect. The same images give ``k``× the defect pixels and twice the
  clean ones, and each defective image has its own clean twin, so the image score compares like with
  like: a larger, steadier signal for early stopping, at (1 + k)× the validation cost.

The test split is then only scored once, at the end.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset


def hold_out(data, fraction: float, seed: int = 0):
    """(train part, validation part): a seeded random ``fraction`` of ``data`` set aside.

    For a Dataset (-> two ``Subset``s) or an image tensor (-> two tensors); a DataLoader cannot be
    split — pass ``val_data`` yourself.
    """
    if isinstance(data, DataLoader):
        raise ValueError("cannot hold out part of a DataLoader: pass val_data=... to fit, or a Dataset")
    n_val = int(len(data) * fraction)
    if not 0 < n_val < len(data):
        raise ValueError(f"holding out {fraction:.0%} of {len(data)} images leaves no validation or no training images")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    val_index, train_index = order[:n_val], order[n_val:]
    if isinstance(data, torch.Tensor):
        return data[train_index], data[val_index]
    return Subset(data, train_index), Subset(data, val_index)


class SyntheticAnomalies(Dataset):
    """Normal images made into a labelled validation set with Perlin-noise anomalies and exact masks.

    ``defects_per_image=None`` (the default): every second image gets a defect, the others stay clean.
    ``defects_per_image=k``: every image stays once clean and is added ``k`` more times, each with a
    different defect (paired), in the order clean, defect 1, …, defect k per image.

    Built once (seeded): every epoch is scored on the same images. Items:
    ``{"image" (3, H, W), "mask" (H, W), "label"}``.
    """

    def __init__(self, data, seed: int = 0, defects_per_image: int | None = None):
        from adlearn.data.augmenter import PerlinAnomalyGenerator

        if defects_per_image is not None and (
            isinstance(defects_per_image, bool) or not isinstance(defects_per_image, int) or defects_per_image < 1
        ):
            raise ValueError(
                f"defects_per_image must be a positive integer (or None: every second image), got {defects_per_image!r}"
            )
        generator = PerlinAnomalyGenerator(p_anomalous=1.0, seed=seed)
        self.items = []
        for index in range(len(data)):
            item = data[index]
            image = item["image"] if isinstance(item, dict) else item  # (3, H, W) normalized
            if defects_per_image is None:
                self.items.append(self._defective(generator, image) if index % 2 else self._clean(image))
            else:
                self.items.append(self._clean(image))
                self.items += [self._defective(generator, image) for _ in range(defects_per_image)]
        if len(self.items) < 2:
            raise ValueError(
                f"synthetic validation needs at least 2 held-out images, got {len(self.items)}; "
                "hold out a larger val_fraction"
            )

    @staticmethod
    def _clean(image: torch.Tensor) -> dict:
        return {"image": image, "mask": torch.zeros(image.shape[-2:]), "label": 0}

    @staticmethod
    def _defective(generator, image: torch.Tensor) -> dict:
        augmented, mask = generator(image[None], normalized=True)  # (1, 3, H, W), (1, 1, H, W)
        return {"image": augmented[0], "mask": mask[0, 0], "label": 1}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class TensorImages(Dataset):
    """A (N, 3, H, W) tensor seen as a dataset of ``{"image": ...}`` items."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}
