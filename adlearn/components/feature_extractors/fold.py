"""Fold frozen batch norms into the convolutions before them (inference speed only).

A frozen backbone's batch norm is a fixed per-channel affine map,

    BN(y) = γ · (y − μ) / √(σ² + ε) + β,

and when it directly follows a convolution y = W ∗ x + b it can be merged into it:

    W' = W · s,   b' = (b − μ) · s + β,   with s = γ / √(σ² + ε)   (per output channel).

The batch norm then disappears (its activation, if it carries one, stays). On a CPU the batch norms
are a large share of a frozen backbone's forward pass, so folding makes every frozen feature
extractor faster (docs/benchmarks.md); the numbers change only by rounding.

Which convolution feeds which batch norm is read off one dry run with forward hooks, not from
module names, so any CNN works: a pair is folded only when the convolution's output goes to that
batch norm and to no other module. A final check compares the outputs before and after; if they
differ (a convolution output also used by plain tensor code, say), nothing is changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _replacement(norm: nn.BatchNorm2d) -> nn.Module | None:
    """What stays of a folded batch norm: nothing, or the activation a timm ``BatchNormAct2d`` carries."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(norm, "act") and hasattr(norm, "drop"):  # timm's BatchNormAct2d: BN -> drop -> act
        return nn.Sequential(norm.drop, norm.act)
    return None  # an unknown subclass: leave it alone


def _conv_feeding_each_norm(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batch-norm name) pairs where the conv's output is consumed by that norm only."""
    produced_by, consumers, alive, hooks = {}, {}, [], []

    def hook(name):
        def record(module, inputs, output):
            for tensor in inputs:
                if isinstance(tensor, torch.Tensor):
                    consumers.setdefault(id(tensor), []).append(name)
                    alive.append(tensor)  # keep ids unique during the run
            if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
                produced_by[id(output)] = name
                alive.append(output)

        return record

    for name, module in model.named_modules():
        # leaf modules, and batch norms even when they hold an activation (timm's BatchNormAct2d)
        if name and (not list(module.children()) or isinstance(module, nn.BatchNorm2d)):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in hooks:
            handle.remove()
    modules = dict(model.named_modules())
    pairs = []
    for tensor_id, conv_name in produced_by.items():
        users = consumers.get(tensor_id, [])
        if len(users) == 1 and isinstance(modules[users[0]], nn.BatchNorm2d):
            pairs.append((conv_name, users[0]))
    return pairs


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)


@torch.no_grad()
def fold_batch_norms(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """``(folded copy of model, number of batch norms folded)``; ``(model, 0)`` if nothing could be.

    ``model`` must be frozen and in eval mode; ``example`` is a small input batch for the dry run.
    """
    if model.training or any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "fold_batch_norms is for frozen models in eval mode: batch norms that still learn cannot be folded"
        )
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    count = 0
    for conv_name, norm_name in _conv_feeding_each_norm(folded, example):
        norm = modules[norm_name]
        replacement = _replacement(norm)
        if replacement is None or not norm.track_running_stats or not norm.affine:
            continue
        _fold_pair(modules[conv_name], norm)
        parent_name, _, attribute = norm_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, attribute, replacement)
        count += 1
    if count == 0 or not _same_outputs(model(example), folded(example), rtol):
        return model, 0  # e.g. a conv output also used elsewhere
    return folded, count


def _same_outputs(expected, actual, rtol: float) -> bool:
    if isinstance(expected, dict):
        expected, actual = list(expected.values()), list(actual.values())
    elif isinstance(expected, torch.Tensor):
        expected, actual = [expected], [actual]
    return all(torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max())) for a, b in zip(expected, actual))


__all__ = ["fold_batch_norms"]
