"""Batch-norm statistics re-estimated for the current weights ("precise BN").

A trained network with batch norms predicts with *running* means and variances: averages of the
last ~10 batches' statistics (momentum 0.1), each computed with the weights of its own step. When
the weights move fast (STFPM: SGD lr 0.4) those averages describe networks that no longer exist, and
the model scores worse in ``eval`` mode than it trains. Re-estimating them (Wu & Johnson, 2021,
"Rethinking 'Batch' in BatchNorm", Sec. 3) is one pass over the training data without gradients,
each trainable batch norm averaging its batch statistics with equal weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def trainable_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms whose statistics training changes: running statistics and trainable weights.

    A frozen backbone's batch norms (no gradient, kept in eval mode) are left alone.
    """
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and any(p.requires_grad for p in module.parameters(recurse=False))
    ]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches, forward: Callable[[dict], object]) -> int:
    """Re-estimate the running statistics of ``model``'s trainable batch norms for its current weights.

    ``forward(batch)`` runs the part of the model that holds them on each batch, without gradient,
    with only these batch norms in train mode (every other module in eval mode, so a frozen part's
    statistics stay as they are); with ``momentum=None`` PyTorch keeps the plain average of the batches' means and
    variances instead of an exponential one. Returns the number of batch norms re-estimated.
    """
    layers = trainable_batch_norms(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    modes = {module: module.training for module in model.modules()}
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        for batch in batches:
            forward(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return len(layers)
