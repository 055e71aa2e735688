"""Small helpers every layer may use: device choice, seeding, one CPU thread for small work."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present; ``"cuda"`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


@contextmanager
def isolated_seed(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Seed torch for the block only: the caller's random state is restored on exit.

    For work a model may or may not do depending on a cache (pretraining a teacher or a VQ model on the
    first fit, reading the file on later ones): without this, a cache miss would reseed and consume the
    global generator, and the same seed would give different scores with and without the cache.
    """
    device = torch.device(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextmanager
def one_cpu_thread(enabled: bool = True) -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the previous count.

    For many small operations (a few hundred rows, a 2-D toy flow) splitting each one across threads
    costs more synchronisation than it saves, and on a busy machine the waiting threads slow the
    whole run down. torch's thread count is process-wide, hence the restore. ``enabled=False``
    (e.g. for work on a GPU) leaves it alone.
    """
    if not enabled:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
