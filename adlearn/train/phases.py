"""Training phases and what ``configure_optimizers`` may return.

A model that trains in stages (DSR: first its reconstruction subnetworks, then its upsampling
module) lists them as `Phase`s; a model that trains in one go has one implicit phase built from its
`TrainingConfig` and its ``configure_optimizers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Phase:
    """One stage of training: what trains (``modules``; every other parameter is frozen and its
    batch norms kept in eval mode meanwhile), with which optimizers, for how long.

    ``configure_optimizers()`` returns what a model's ``configure_optimizers`` returns; ``modules``
    None means everything that requires a gradient. ``step(batch, trainer)`` is the phase's own
    training step (what ``model.training_step`` is otherwise); with automatic optimization it also
    gives the phase's validation loss, called as ``step(batch, None)``.
    """

    name: str
    configure_optimizers: Callable[[], object]
    modules: Sequence[nn.Module] | None = None
    max_epochs: int | None = None
    max_steps: int | None = None
    step: Callable | None = None

    def __post_init__(self):
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError(f"training phase {self.name!r}: give max_epochs or max_steps")


def optimizer_pairs(configured) -> dict[str, tuple[torch.optim.Optimizer, object]]:
    """What ``configure_optimizers()`` returned, as {name: (optimizer, scheduler or None)}.

    Accepted: an optimizer; (optimizer, scheduler); or a dict of those, one per name.
    """

    def pair(value, name):
        if isinstance(value, torch.optim.Optimizer):
            return value, None
        if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], torch.optim.Optimizer):
            return value[0], value[1]
        raise TypeError(
            f"configure_optimizers: {name!r} must be an optimizer or (optimizer, scheduler or None), "
            f"got {type(value).__name__}"
        )

    if isinstance(configured, dict):
        if not configured:
            raise ValueError("configure_optimizers returned an empty dict: name at least one optimizer")
        return {name: pair(value, name) for name, value in configured.items()}
    return {"optimizer": pair(configured, "optimizer")}
