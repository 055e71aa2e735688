"""The one place a model is registered: ``MODEL_CLASSES`` maps its name to ``"module:Class"`` in
``adlearn.models``.

Listing the models imports none of them (``available_models()`` reads the table); a model's module is
imported the first time its class is asked for. The class states the same name in its ``name``
attribute (what ``save`` writes and ``load`` reads back); `get_model_class` checks that the two agree.
This module imports no model and not `adlearn.models.base`, so ``base.load`` can use it freely.
"""

from __future__ import annotations

import importlib

# registered name -> "module:Class" in adlearn.models (one file per model)
MODEL_CLASSES: dict[str, str] = {
    "ai_vad": "ai_vad:AiVad",
    "cfa": "cfa:Cfa",
    "cflow": "cflow:Cflow",
    "csflow": "csflow:Csflow",
    "dfkde": "dfkde:Dfkde",
    "dfm": "dfm:Dfm",
    "draem": "draem:Draem",
    "dsr": "dsr:Dsr",
    "efficient_ad": "efficient_ad:EfficientAd",
    "fastflow": "fastflow:Fastflow",
    "ganomaly": "ganomaly:Ganomaly",
    "padim": "padim:Padim",
    "patchcore": "patchcore:Patchcore",
    "reverse_distillation": "reverse_distillation:ReverseDistillation",
    "rkde": "rkde:Rkde",
    "stfpm": "stfpm:Stfpm",
    "uflow": "uflow:Uflow",
    "winclip": "winclip:Winclip",
}


# wrappers that run a registered model another way (not models themselves: available_models() leaves them
# out); their checkpoints name them, so `load` finds them here. "tiled": `TiledModel` (option tiling=...)
WRAPPER_CLASSES: dict[str, str] = {"tiled": "tiled:TiledModel"}


def available_models() -> list[str]:
    """The registered model names, sorted (no model module is imported)."""
    return sorted(MODEL_CLASSES)


def model_location(name: str) -> tuple[str, str]:
    """``("adlearn.models.padim", "Padim")`` for ``"padim"`` (``"PaDiM"``, ``"reverse-distillation"`` work too)."""
    key = name.lower().replace("-", "_")
    table = MODEL_CLASSES if key in MODEL_CLASSES else WRAPPER_CLASSES
    if key not in table:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    module, _, class_name = table[key].partition(":")
    return f"adlearn.models.{module}", class_name


def get_model_class(name: str) -> type:
    """The model class registered as ``name`` (its module is imported now, once)."""
    key = name.lower().replace("-", "_")
    module, class_name = model_location(name)
    model_class = getattr(importlib.import_module(module), class_name, None)
    if model_class is None:
        raise ImportError(f"{module} defines no class {class_name!r}: fix MODEL_CLASSES[{key!r}] in {__name__}")
    if model_class.name != key:
        raise TypeError(
            f"{module}.{class_name}.name is {model_class.name!r}, but MODEL_CLASSES registers it as {key!r}: "
            "give the class the registered name"
        )
    return model_class


__all__ = ["MODEL_CLASSES", "available_models", "get_model_class", "model_location"]
