"""Small helpers every layer may use: device choice, seeding, one CPU thread for small work.

Randomness. adlearn never reseeds the caller's global generators (Python's `random`, NumPy's
`np.random`, torch's CPU and CUDA generators) behind their back:

* explicit draws (a channel choice, a projection matrix, a shuffle) take their own generator,
  `torch_generator(seed)` / `numpy_generator(seed)`;
* implicit draws (torch's default layer initialisation, dropout) run inside `seeded(seed)`, which seeds
  the global generators for the block and puts the caller's states back on exit, or inside a
  `RandomStream`, a private stream that goes on where it stopped each time it is entered.

`seed_everything` is for users and notebooks that *want* the global generators seeded.
"""

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
    """Seed Python, NumPy and torch (CPU and CUDA) globally, for a user's or a notebook's whole run.

    Models never call it: they draw from their own generators (see the module docstring).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A `torch.Generator` on ``device`` seeded with ``seed``: explicit draws that repeat, the global one untouched."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def numpy_generator(seed: int | None) -> np.random.Generator:
    """A NumPy `Generator` seeded with ``seed`` (``None``: fresh entropy); NumPy's global state untouched."""
    return np.random.default_rng(seed)


def _cuda_devices(device: str | torch.device | None) -> list[int]:
    """The CUDA devices whose generators a block may draw from: all of them when the block runs on a GPU or
    CUDA is already in use; none otherwise (so a CPU block never initialises CUDA)."""
    if not torch.cuda.is_available():
        return []
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu or torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def _capture(cuda: list[int]) -> dict:
    """The global generators' states (Python, NumPy, torch CPU and the given CUDA devices)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": {index: torch.cuda.get_rng_state(index) for index in cuda},
    }


def _restore(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for index, cuda_state in state["cuda"].items():
        torch.cuda.set_rng_state(cuda_state, index)


def _seed_globals(seed: int, cuda: list[int]) -> None:
    """Seed Python, NumPy, torch CPU and the given CUDA devices (not `torch.manual_seed`: on a machine whose
    CUDA is not initialised it would queue a seed for the caller's future CUDA generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    for index in cuda:
        torch.cuda.default_generators[index].manual_seed(seed)


class RandomStream:
    """A private random stream for code that draws from the global generators (layer initialisation, dropout).

    Inside ``with stream:`` the global generators (Python, NumPy, torch CPU and CUDA) continue this stream —
    seeded with ``seed`` on the first entry, where the last block left it afterwards; on exit the stream's
    state is kept and the caller's states are put back byte for byte. Nested entries of the same stream are
    one block. The training loop keeps one per run, so stepping by hand repeats as ``fit`` does.

        stream = RandomStream(0)
        with stream:
            a = torch.rand(1)  # the first number of seed 0's stream
        torch.rand(1)  # the caller's own stream: neither moved nor reseeded by the block
        with stream:
            b = torch.rand(1)  # the second number of seed 0's stream
    """

    def __init__(self, seed: int, device: str | torch.device | None = None):
        self.seed = int(seed)
        self.device = device
        self._state: dict | None = None  # the stream's own state between blocks (None: not started)
        self._outer: dict | None = None  # the caller's state during a block
        self._depth = 0

    def __enter__(self) -> RandomStream:
        self._depth += 1
        if self._depth > 1:
            return self
        cuda = _cuda_devices(self.device)
        self._outer = _capture(cuda)
        if self._state is None:
            _seed_globals(self.seed, cuda)
        else:
            _restore(self._state)
            fresh = [index for index in cuda if index not in self._state["cuda"]]
            for index in fresh:  # CUDA came into use since the last block
                torch.cuda.default_generators[index].manual_seed(self.seed)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth:
            return
        outer, self._outer = self._outer, None
        self._state = _capture(list(outer["cuda"]))
        _restore(outer)

    def reset(self, seed: int | None = None) -> None:
        """Start the stream again from ``seed`` (default: the same one) — now inside a block, else at the next."""
        if seed is not None:
            self.seed = int(seed)
        self._state = None
        if self._depth:
            _seed_globals(self.seed, list(self._outer["cuda"]))


@contextmanager
def seeded(seed: int, device: str | torch.device | None = None) -> Iterator[None]:
    """Seed the global generators (Python, NumPy, torch CPU and CUDA) for the block only.

    On exit the caller's states are restored byte for byte: code inside (a model's layers initialised
    by torch's defaults, a training run with dropout) repeats for the same seed, and the caller's own
    random sequence goes on as if the block had never run. ``device``: where the block runs (a CUDA
    device: its generators are seeded and restored too).
    """
    with RandomStream(seed, device):
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
