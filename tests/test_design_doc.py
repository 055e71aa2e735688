"""The tables of ``docs/design.md`` state facts about the code; each is parsed here and compared with it.

The layer table has its own test (``tests/test_layers.py``). Models are named in the tables as the
papers name them (PaDiM, C-Flow, ...); ``DISPLAY_NAMES`` maps them to the registered names.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from adlearn.models import AnomalyModel, MemoryBankModel, TrainedModel, available_models, get_model_class
from adlearn.models.registry import MODEL_CLASSES

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
MODELS_DIR = REPO / "adlearn" / "models"
BASES = (AnomalyModel, MemoryBankModel, TrainedModel)

DISPLAY_NAMES = {
    "AI-VAD": "ai_vad",
    "CFA": "cfa",
    "C-Flow": "cflow",
    "CS-Flow": "csflow",
    "DFKDE": "dfkde",
    "DFM": "dfm",
    "DRAEM": "draem",
    "DSR": "dsr",
    "EfficientAD": "efficient_ad",
    "FastFlow": "fastflow",
    "GANomaly": "ganomaly",
    "PaDiM": "padim",
    "PatchCore": "patchcore",
    "Reverse Distillation": "reverse_distillation",
    "R-KDE": "rkde",
    "STFPM": "stfpm",
    "U-Flow": "uflow",
    "WinCLIP": "winclip",
}


# =========================================================================== reading the page
def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Every table of the page: a list of rows (the header first, the ``---`` row left out) of cells."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def table_with_header(header: list[str]) -> list[list[str]]:
    found = [table for table in markdown_tables(DESIGN.read_text(encoding="utf-8")) if table[0] == header]
    assert len(found) == 1, f"docs/design.md should have one table headed {header}, found {len(found)}"
    return found[0][1:]


def step_row(step_name: str) -> list[str]:
    rows = [
        row
        for row in table_with_header(["step", "name", "models"])
        if any(name.rpartition("common.")[2].startswith(step_name) for name in backticked(row[1]))
    ]
    assert len(rows) == 1, f"the step-names table should have one row naming {step_name}"
    return rows[0]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def models_named(text: str) -> set[str]:
    """The registered names of the models a cell names (as the papers write them)."""
    return {
        key for display, key in DISPLAY_NAMES.items() if re.search(rf"(?<![\w-]){re.escape(display)}(?![\w-])", text)
    }


# =========================================================================== reading the code
def model_classes() -> dict[str, type]:
    return {name: get_model_class(name) for name in available_models()}


def defines(model_class: type, method: str) -> bool:
    """Whether the model itself (not `AnomalyModel` and its families) implements ``method``."""
    return any(
        method in vars(klass) for klass in model_class.__mro__ if issubclass(klass, AnomalyModel) and klass not in BASES
    )


def models_defining(method: str) -> set[str]:
    return {name for name, model_class in model_classes().items() if defines(model_class, method)}


def module_functions(suffixes: tuple[str, ...]) -> set[str]:
    """Module-level functions of ``adlearn/models/*.py`` whose names end with one of ``suffixes``."""
    names = set()
    for path in MODELS_DIR.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith(suffixes):
                names.add(node.name)
    return names


def model_module_tree(name: str) -> ast.Module:
    module = MODEL_CLASSES[name].partition(":")[0]
    return ast.parse((MODELS_DIR / f"{module}.py").read_text(encoding="utf-8"))


def calls_of(tree: ast.Module, function: str) -> list[tuple[ast.Call, ast.FunctionDef | None]]:
    """Every call of ``function`` in ``tree``, with the function it is made in."""
    found = []
    for outer in ast.walk(tree):
        if isinstance(outer, ast.FunctionDef):
            for node in ast.walk(outer):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == function
                ):
                    found.append((node, outer))
    return found


def combine_modes() -> dict[str, set[str]]:
    """``{mode: {models}}`` from the models' calls of ``combine_layer_maps`` (a mode passed as a
    parameter is read from that parameter's default)."""
    modes: dict[str, set[str]] = {}
    for name in available_models():
        for call, function in calls_of(model_module_tree(name), "combine_layer_maps"):
            mode = call.args[2] if len(call.args) > 2 else next(k.value for k in call.keywords if k.arg == "mode")
            if isinstance(mode, ast.Name):
                parameters = function.args.args[-len(function.args.defaults) :] if function.args.defaults else []
                mode = next(d for p, d in zip(parameters, function.args.defaults, strict=True) if p.arg == mode.id)
            modes.setdefault(mode.value, set()).add(name)
    return modes


# =========================================================================== the model table
def test_the_model_table_is_the_registry():
    rows = table_with_header(["name", "class", "family", "task"])
    documented = {backticked(name)[0]: (backticked(location)[0], family, task) for name, location, family, task in rows}
    actual = {}
    for name, model_class in model_classes().items():
        family = "memory bank" if issubclass(model_class, MemoryBankModel) else "trained"
        actual[name] = (MODEL_CLASSES[name], family, model_class.task)
    assert documented == actual


def test_every_model_has_a_display_name():
    assert set(DISPLAY_NAMES.values()) == set(available_models())


# =========================================================================== the step names
def test_every_model_extracts_features_and_predicts_a_batch():
    assert step_row("extract_features")[2].startswith("all:")
    assert (
        models_named(step_row("extract_features")[2]) == set(available_models()) == models_defining("extract_features")
    )
    assert step_row("predict_step")[2] == "all"
    assert models_defining("predict_step") == set(available_models())


@pytest.mark.parametrize("method", ["collect", "fit_bank"])
def test_the_memory_bank_steps_name_the_memory_bank_models(method):
    memory_bank = {name for name, model_class in model_classes().items() if issubclass(model_class, MemoryBankModel)}
    assert models_named(step_row(method)[2]) == models_defining(method) == memory_bank


def test_the_middle_steps_name_the_models_that_define_them():
    cell = step_row("flow_forward")[1]
    documented: dict[str, set[str]] = {}
    pending: list[str] = []
    for token in re.finditer(r"`([^`]+)`|\(([^()]*)\)", cell):  # `method` ... (Model, ...): methods, then owners
        if token.group(1):
            pending.append(re.match(r"\w+", token.group(1)).group(0))
        elif models_named(token.group(2)):
            for method in pending:
                documented[method] = models_named(token.group(2))
            pending = []
    assert not pending, f"methods without models in the middle-steps row: {pending}"
    assert set(documented) >= {"flow_forward", "encode", "patch_scores", "image_score", "reconstruction_error"}
    for method, models in documented.items():
        assert models_defining(method) == models, method


def test_every_loss_formula_is_listed():
    listed = {name for name in backticked(step_row("<model>_loss")[2])}
    assert listed == module_functions(("_loss",))
    trained = {name for name, model_class in model_classes().items() if issubclass(model_class, TrainedModel)}
    assert {f"{name}_loss" for name in trained} <= listed


def test_every_map_formula_is_listed():
    cell = step_row("<model>_anomaly_map")[2]
    listed = {name for name in backticked(cell) if name.endswith(("_anomaly_map", "_image_score"))}
    assert listed == module_functions(("_anomaly_map", "_image_score"))
    assert "latent_distance" in backticked(cell) and "latent_distance" in module_functions(("_distance",))
    classification = {name for name, model_class in model_classes().items() if model_class.task == "classification"}
    for name in set(available_models()) - classification - models_named("DFKDE DFM PaDiM PatchCore"):
        assert f"{name}_anomaly_map" in listed, name


def test_the_models_with_an_anomaly_map_method():
    assert models_named(step_row("anomaly_map(")[2]) == models_defining("anomaly_map")


def test_combine_layer_maps_modes():
    cell = step_row("combine_layer_maps")[1]
    documented = {mode: models_named(models) for mode, models in re.findall(r'`"(\w+)"` \(([^()]*)\)', cell)}
    assert documented == combine_modes()


def test_the_models_scored_by_the_maps_maximum():
    calling = {name for name in available_models() if calls_of(model_module_tree(name), "prediction_from_map")}
    assert models_named(step_row("prediction_from_map")[2]) == calling


# =========================================================================== the training loop
def test_the_training_loop_table_lists_its_modules_and_the_config_fields():
    from adlearn.train import TrainingConfig

    rows = table_with_header(["module", "job"])
    documented = [name for module, _ in rows for name in backticked(module)]
    assert sorted(documented) == sorted(
        path.name for path in (REPO / "adlearn" / "train").glob("*.py") if path.name != "__init__.py"
    )
    config_row = next(job for module, job in rows if backticked(module) == ["config.py"])
    fields = backticked(config_row.split("—")[0])
    assert fields[0] == "TrainingConfig"
    assert fields[1:] == [field.name for field in dataclasses.fields(TrainingConfig)]


@pytest.mark.parametrize(("module", "name"), [("config", "TrainingConfig"), ("loop", "Trainer"), ("phases", "Phase")])
def test_the_training_loop_table_names_what_each_module_defines(module, name):
    import importlib

    rows = table_with_header(["module", "job"])
    job = next(job for cell, job in rows if backticked(cell) == [f"{module}.py"])
    assert name in backticked(job)
    assert inspect.isclass(getattr(importlib.import_module(f"adlearn.train.{module}"), name))


# =========================================================================== the data item
def test_a_dataset_item_has_the_documented_keys_and_types(tmp_path, monkeypatch):
    import torch

    from adlearn.data import MVTecDataset, synthetic_root

    rows = table_with_header(["key", "type", "meaning"])
    documented = {backticked(key)[0]: kind for key, kind, _ in rows}
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    root = synthetic_root(image_size=32, n_train=1, n_test_good=1, n_test_defect=4)
    dataset = MVTecDataset(root, "weave", split="test")
    items = [dataset[index] for index in range(len(dataset))]
    for item in items:
        assert set(item) == set(documented)
        assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 3
        assert item["mask"].dtype.is_floating_point and item["mask"].dim() == 2
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert isinstance(item["label"], int) and isinstance(item["defect_type"], str)
        assert isinstance(item["image_path"], str)
        assert (item["defect_type"] == "good") == (item["label"] == 0)
    assert documented["label"] == "int" and documented["defect_type"] == "str" and documented["image_path"] == "str"
    assert {item["label"] for item in items} == {0, 1}


# =========================================================================== CONTRIBUTING.md
def test_contributing_names_files_and_make_targets_that_exist():
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    folders = ("adlearn/", "tests/", "docs/", "notebooks/", "book/", "benchmarks/")
    paths = [name for name in re.findall(r"`([\w./*-]+)`", text) if name.startswith(folders) or name.endswith(".md")]
    assert "adlearn/models/registry.py" in paths and "tests/test_model_contract.py" in paths
    missing = [name for name in paths if not list(REPO.glob(name.rstrip("/")))]
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^make ([\w-]+)", text, flags=re.M))
    assert targets >= {"install", "lint", "test-fast", "test"}
    assert not [target for target in targets if not re.search(rf"^{target}:", makefile, flags=re.M)]
