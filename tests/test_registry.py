"""The one model registry: ``MODEL_CLASSES`` in ``adlearn.models.registry``."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import adlearn.models
from adlearn.models import AnomalyModel, MemoryBankModel, TrainedModel, available_models, get_model_class
from adlearn.models.registry import MODEL_CLASSES, model_location

MODELS_DIR = Path(adlearn.models.__file__).parent
BASES = {AnomalyModel, MemoryBankModel, TrainedModel}


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_entry_loads_a_model_class_named_by_its_key(name):
    module, class_name = model_location(name)
    model_class = get_model_class(name)
    assert model_class.__module__ == module and model_class.__name__ == class_name
    assert issubclass(model_class, AnomalyModel) and model_class not in BASES
    assert model_class.name == name
    assert "name" in vars(model_class), f"{class_name} must state its own name (name = {name!r})"


def test_no_model_module_defines_an_unregistered_model():
    """Every model class is in MODEL_CLASSES, or — a wrapper of other models (TiledModel) — in WRAPPER_CLASSES."""
    from adlearn.models.registry import WRAPPER_CLASSES

    registered = {get_model_class(name) for name in MODEL_CLASSES} | {get_model_class(n) for n in WRAPPER_CLASSES}
    found = set()
    for info in pkgutil.iter_modules([str(MODELS_DIR)]):
        module = importlib.import_module(f"adlearn.models.{info.name}")
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(value, AnomalyModel) and value not in BASES:
                found.add(value)
    assert found - registered == set(), f"models missing from MODEL_CLASSES: {sorted(map(str, found - registered))}"
    assert registered <= found
    assert not set(WRAPPER_CLASSES) & set(MODEL_CLASSES)


def test_no_model_file_registers_itself_a_second_way():
    """The table is the only registration: no ``@register`` decorator is left, nor a decorator to use."""
    assert not hasattr(importlib.import_module("adlearn.models.base"), "register")
    for path in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for decorator in node.decorator_list:
                    call = decorator.func if isinstance(decorator, ast.Call) else decorator
                    name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "")
                    assert name != "register", f"{path.name}:{node.lineno}: {node.name} is registered by a decorator"


def test_names_are_normalised_and_unknown_names_are_a_clear_error():
    assert get_model_class("Reverse-Distillation") is get_model_class("reverse_distillation")
    with pytest.raises(ValueError, match="unknown model 'nope'; available: ai_vad, cfa, cflow"):
        get_model_class("nope")
    assert available_models() == sorted(MODEL_CLASSES)


def test_a_class_whose_name_disagrees_with_its_entry_is_refused(monkeypatch):
    monkeypatch.setitem(MODEL_CLASSES, "padim_copy", "padim:Padim")
    with pytest.raises(TypeError, match="Padim.name is 'padim', but MODEL_CLASSES registers it as 'padim_copy'"):
        get_model_class("padim_copy")
    monkeypatch.setitem(MODEL_CLASSES, "ghost", "padim:Ghost")
    with pytest.raises(ImportError, match="defines no class 'Ghost'"):
        get_model_class("ghost")


def test_listing_the_models_imports_none_of_them():
    code = (
        "import sys; from adlearn.models import available_models; names = available_models(); "
        "loaded = [m for m in sys.modules if m.startswith('adlearn.models.') and m.rpartition('.')[2] in names]; "
        "print(len(names), loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{len(MODEL_CLASSES)} []"
