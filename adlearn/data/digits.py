"""A real one-class problem with real labels: scikit-learn's handwritten digits.

The classification models (DFKDE, DFM's ``nll`` score) give one score per image and no map; the
embedded synthetic data and MVTec test them on defects we planted or photographed. The digits add
a problem where "normal" and "anomalous" are decided by people, not by a generator: train on one
digit, and every other digit is an anomaly. The 1,797 images (8×8, 16 grey levels) ship inside
scikit-learn's wheel, so this works offline.

    images, labels = digit_images(size=32)                   # (1797, 3, 32, 32) normalized, (1797,)
    split = one_class_split(labels, digit=3, n_others=150)   # train on half of the 3s
    model.fit(images[split.train])
    scores = model.predict(images[split.test]).pred_score    # compare with split.is_anomalous
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def digit_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits as ImageNet-normalized RGB images ``(N, 3, size, size)`` and labels ``(N,)``.

    The grey levels (0–16) are scaled to [0, 1], bilinearly upsampled to ``size`` (a backbone needs
    more than 8 pixels) and copied to three channels.
    """
    from sklearn.datasets import load_digits

    from adlearn.data.transforms import normalize

    if size < 8:
        raise ValueError(f"size must be at least the digits' own 8 pixels, got {size}")
    bunch = load_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return normalize(pixels.expand(-1, 3, -1, -1).contiguous()), torch.tensor(bunch.target)


class OneClassSplit(NamedTuple):
    train: torch.Tensor  # indices of training images: all of one class
    test: torch.Tensor  # indices of test images: the class's other half, then the others
    is_anomalous: np.ndarray  # (len(test),) 0/1 labels for the test images


def one_class_split(labels: torch.Tensor, digit: int, n_others: int | None = 150, seed: int = 0) -> OneClassSplit:
    """Train on a random half of ``digit``; test on its other half plus ``n_others`` random other
    images (``None``: all of them), which are the anomalies. Seeded: the same split every time."""
    labels = torch.as_tensor(labels)
    if not bool((labels == digit).any()):
        raise ValueError(f"no image has the label {digit}; the labels present are {sorted(labels.unique().tolist())}")
    generator = torch.Generator().manual_seed(seed)
    own = torch.nonzero(labels == digit).squeeze(1)
    own = own[torch.randperm(len(own), generator=generator)]
    others = torch.nonzero(labels != digit).squeeze(1)
    others = others[torch.randperm(len(others), generator=generator)[:n_others]]
    train, test = own[: len(own) // 2], torch.cat([own[len(own) // 2 :], others])
    return OneClassSplit(train, test, (labels[test] != digit).int().numpy())


__all__ = ["OneClassSplit", "digit_images", "one_class_split"]
