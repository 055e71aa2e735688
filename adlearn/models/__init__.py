"""The models: ``create("padim", ...)``, ``available_models()``, ``load(path)``.

A model is registered in one place, the ``MODEL_CLASSES`` table of `adlearn.models.registry`
(name -> ``"module:Class"``). Model modules are imported on first use, so listing the models costs
nothing.
"""

from __future__ import annotations

from adlearn.models.base import (
    AnomalyModel,
    MemoryBankModel,
    NotFittedError,
    Prediction,
    TrainedModel,
    load,
)
from adlearn.models.registry import MODEL_CLASSES, available_models, get_model_class


def create(name: str, preset: str | None = None, **options) -> AnomalyModel:
    """Build a registered model with its hyper-parameters, e.g. ``create("padim", n_features=100)``.

    ``preset="cpu"`` (or ``"paper"``) starts from the model's named recipe; explicit options win. The
    options are resolved by `adlearn.options` (defaults <- preset <- explicit), as on the command line:
    an unknown option or a rejected value is an `adlearn.options.OptionError` naming it.
    """
    from adlearn.options import build_model

    return build_model(name, preset=preset, options=options)


__all__ = [
    "MODEL_CLASSES",
    "AnomalyModel",
    "MemoryBankModel",
    "NotFittedError",
    "Prediction",
    "TrainedModel",
    "available_models",
    "create",
    "get_model_class",
    "load",
]
