"""adlearn — visual anomaly detection, re-implemented readably from scratch.

Importing ``adlearn`` is cheap: heavy modules (torch models, timm) load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_LAZY = {
    "evaluate": ("adlearn.evaluate", "evaluate"),
    "create": ("adlearn.models", "create"),
    "load": ("adlearn.models", "load"),
    "available_models": ("adlearn.models", "available_models"),
    "export": ("adlearn.export", "export"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'adlearn' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
