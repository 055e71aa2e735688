"""The model registry: ``create("padim", ...)``, ``available_models()``, ``load(path)``.

Model modules are imported on first use, so listing the models costs nothing.
"""

from __future__ import annotations

import importlib

from adlearn.models.base import (
    _REGISTRY,
    AnomalyModel,
    MemoryBankModel,
    NotFittedError,
    Prediction,
    TrainedModel,
    load,
    register,
)

# registered name -> module in adlearn.models (one file per model)
MODEL_MODULES: dict[str, str] = {
    "cfa": "cfa",
    "cflow": "cflow",
    "csflow": "csflow",
    "dfkde": "dfkde",
    "dfm": "dfm",
    "draem": "draem",
    "dsr": "dsr",
    "efficient_ad": "efficient_ad",
    "fastflow": "fastflow",
    "ganomaly": "ganomaly",
    "padim": "padim",
    "patchcore": "patchcore",
    "reverse_distillation": "reverse_distillation",
    "stfpm": "stfpm",
    "uflow": "uflow",
}


def available_models() -> list[str]:
    return sorted(MODEL_MODULES)


def get_model_class(name: str) -> type[AnomalyModel]:
    key = name.lower().replace("-", "_")
    if key not in MODEL_MODULES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    importlib.import_module(f"adlearn.models.{MODEL_MODULES[key]}")
    return _REGISTRY[key]


def create(name: str, preset: str | None = None, **options) -> AnomalyModel:
    """Build a registered model with its hyper-parameters, e.g. ``create("padim", n_features=100)``.

    ``preset="cpu"`` (or ``"paper"``) starts from the model's named recipe; explicit options win.
    """
    model_class = get_model_class(name)
    return model_class(**{**model_class.preset(preset), **options})


__all__ = [
    "AnomalyModel",
    "MemoryBankModel",
    "NotFittedError",
    "Prediction",
    "TrainedModel",
    "available_models",
    "create",
    "get_model_class",
    "load",
    "register",
]
