"""Where and in which precision training runs: devices, mixed precision, batches, progress bars."""

from __future__ import annotations

import sys

import torch


def resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to train with, or None for full float32.

    ``"auto"``/True: bfloat16 on CUDA GPUs that have it, else float16; never on the CPU (slow there
    for convolutions, and not needed). ``"bf16"``/``"fp16"`` ask explicitly; False/"off": none.
    """
    if amp in (None, False, "off", "none", "no"):
        return None
    if amp not in (True, "auto", "bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: use 'auto', 'bf16', 'fp16' or False")
    if device.type != "cuda":
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            raise ValueError("amp='fp16' needs a CUDA GPU; on the CPU use amp='bf16' or leave it off")
        return None
    if amp == "fp16" or (amp in (True, "auto") and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def interactive() -> bool:
    """True in a terminal or a Jupyter kernel: where a live progress bar is worth drawing."""
    if sys.stdout.isatty():
        return True
    if "IPython" not in sys.modules:  # not imported: certainly no notebook
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"  # Jupyter, not a terminal


def batch_to_device(batch, device: torch.device) -> dict:
    """A DataLoader batch as a dict on ``device``: tensors moved, strings and lists left as they are.

    A bare tensor or a (images, ...) tuple becomes ``{"image": images}``.
    """
    if isinstance(batch, torch.Tensor):
        batch = {"image": batch}
    elif isinstance(batch, (list, tuple)):
        batch = {"image": batch[0]}
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
