"""`DynamicBufferMixin`: buffers whose size is only known after fitting
(reference: ``anomalib.models.components.base.DynamicBufferMixin``).

A memory bank or a fitted statistic starts as an empty tensor. When a checkpoint is loaded, each
registered buffer is first resized to the checkpoint's shape, then filled — so a fresh, unfitted
module can load a fitted one's state dict.
"""

from __future__ import annotations

import torch
from torch import nn


class NotFittedError(RuntimeError):
    """Raised when a component or model is used before ``fit``."""


def check_fitted_rows(fitted: bool, inputs: torch.Tensor, n_features: int, who: str, fit_call: str) -> None:
    """The two errors a fitted density/cluster model gives for bad queries: not fitted yet, or rows
    that are not (N, n_features) like the training data."""
    if not fitted:
        raise NotFittedError(f"{who}: not fitted yet, call {fit_call} first")
    if inputs.dim() != 2 or inputs.shape[1] != n_features:
        raise ValueError(f"{who} expects shape (N, {n_features}), got {tuple(inputs.shape)}")


class DynamicBufferMixin(nn.Module):
    """Resize registered buffers to the checkpoint's shapes before loading them."""

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name, buffer in self._buffers.items():
            key = prefix + name
            if key in state_dict and buffer is not None and buffer.shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buffer.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def get_tensor_attribute(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"attribute {name!r} is a {type(value).__name__}, not a tensor")
        return value
