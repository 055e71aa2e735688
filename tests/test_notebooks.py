"""The notebooks are tests.

Fast checks (no execution), run by ``make test-fast`` too:

- every registered model has exactly one notebook ``notebooks/NN_<model>.ipynb`` (NN in 10-39), which
  gets the model from ``adlearn`` and redefines no class or function that ``adlearn`` holds;
- every notebook is in the book's table of contents (``book/_toc.yml``), in course order;
- notebooks are stored clean (no outputs, execution counts or widget state) and start with a
  markdown title and a ``parameters`` cell (the rule is in notebooks/README.md).

Slow checks (``@pytest.mark.slow``), one execution shared by this file and tests/test_book.py:

- every notebook runs with papermill in smoke mode on the CPU (``smoke=True, device="cpu"``), two at a
  time, into ``build/notebooks/`` (with ``timings.json``); the timing table is printed;
- nbval (``--nbval-lax``) re-runs those executed copies — up to their last checked cell, into
  ``build/nbval/`` — and compares the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` (sanitized with ``notebooks/nbval_sanitize.cfg``): they must be reproducible.

Knobs (environment): ``ADLEARN_NOTEBOOK_JOBS`` (notebooks at a time, default 2),
``ADLEARN_NOTEBOOKS`` (comma-separated names to run only some), ``ADLEARN_NBVAL=0`` (skip nbval),
``ADLEARN_NOTEBOOK_MAX_S`` (a per-notebook smoke budget in seconds that fails the test; unset by
default: speed is reported — the timing table, and a warning above 60 s — never asserted, because a
slow or busy machine is not a broken notebook).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
EXECUTED_DIR = REPO / "build" / "notebooks"
NBVAL_DIR = REPO / "build" / "nbval"  # the executed copies, cut after their last checked cell
SANITIZE = NOTEBOOK_DIR / "nbval_sanitize.cfg"
TOC = REPO / "book" / "_toc.yml"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]

# The parameters every notebook's `parameters` cell defines (notebooks/README.md, "Cells every
# notebook starts with"). Component-family notebooks (03-09) may leave out what they do not use.
ALL_PARAMETERS = {"smoke", "device", "data_root", "category", "backbone", "pretrained", "image_size", "seed"}
COMPONENT_PARAMETERS = {"smoke", "device", "image_size", "seed"}
MODEL_NUMBERS = range(10, 40)
COMPONENT_NUMBERS = range(3, 10)
DEPLOYMENT_NUMBERS = range(40, 50)  # exporting and running models outside Python's training stack
CAPSTONE_NUMBERS = range(50, 60)


def number(path: Path) -> int:
    match = re.match(r"(\d\d)_[a-z0-9_]+\.ipynb$", path.name)
    return int(match.group(1)) if match else -1


def read(path: Path):
    return nbformat.read(path, as_version=4)


def code_of(notebook) -> str:
    """All code cells, with IPython magics and shell lines commented out so that ``ast`` parses it."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            lines += [
                ("# " + line) if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()
            ]
            lines.append("")
    return "\n".join(lines)


def parameters_cell(notebook):
    return next(
        (cell for cell in notebook.cells if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])),
        None,
    )


def assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def adlearn_public_names() -> dict[str, str]:
    """Public top-level classes and functions of every adlearn module -> where they are defined."""
    names = {}
    for path in sorted((REPO / "adlearn").rglob("*.py")):
        if "tools" in path.relative_to(REPO / "adlearn").parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith(
                "_"
            ):
                names.setdefault(node.name, str(path.relative_to(REPO)))
    return names


def toc_entries() -> list[tuple[str, str]]:
    """(chapter file, entry) for every ``file:``/``glob:`` under the chapters, in order."""
    toc = yaml.safe_load(TOC.read_text())
    entries = []

    def walk(items, chapter):
        for item in items or []:
            for key in ("file", "glob"):
                if key in item:
                    entries.append((chapter, f"{key}:{item[key]}"))
            walk(item.get("sections"), chapter)
            for part in item.get("parts", []) or []:
                walk(part.get("chapters"), chapter)

    for part in toc.get("parts", [{"chapters": toc.get("chapters")}]):
        for chapter in part.get("chapters") or []:
            walk(chapter.get("sections"), chapter["file"])
    return entries


# ============================================================================ fast checks
def test_notebooks_exist_and_are_numbered():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"
    badly_named = [p.name for p in NOTEBOOKS if number(p) < 0]
    assert not badly_named, f"notebooks must be named NN_name.ipynb (two digits, lower case): {badly_named}"
    numbers = [number(p) for p in NOTEBOOKS]
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicated, f"two notebooks share the numbers {duplicated}"
    families = (range(0, 3), COMPONENT_NUMBERS, MODEL_NUMBERS, DEPLOYMENT_NUMBERS, CAPSTONE_NUMBERS)
    outside = [p.name for p in NOTEBOOKS if not any(number(p) in family for family in families)]
    assert not outside, (
        f"notebook numbers outside every family: {outside} (00-02 introduction, 03-09 components, "
        "10-39 models, 40-49 deployment, 50-59 capstone; see book/_toc.yml)"
    )


def test_every_registered_model_has_exactly_one_notebook():
    from adlearn.models import available_models

    models = set(available_models())
    model_notebooks = [p for p in NOTEBOOKS if number(p) in MODEL_NUMBERS]
    by_model: dict[str, list[str]] = {}
    for path in model_notebooks:
        by_model.setdefault(path.stem[3:], []).append(path.name)
    missing = sorted(models - set(by_model))
    assert not missing, (
        f"registered models without a notebook: {missing}. Add notebooks/NN_<model>.ipynb "
        f"(NN 10-19 memory-bank/density models, 20-39 trained models; see notebooks/README.md)"
    )
    twice = {model: names for model, names in by_model.items() if len(names) > 1}
    assert not twice, f"one notebook per model, but: {twice}"
    orphans = sorted(set(by_model) - models)
    assert not orphans, (
        f"model notebooks whose name after the number is not a registered model: {orphans} "
        f"(registered: {sorted(models)})"
    )


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if number(p) in MODEL_NUMBERS], ids=lambda p: p.name)
def test_model_notebook_gets_its_model_from_adlearn(path):
    model = path.stem[3:]
    source = code_of(read(path))
    uses = [
        rf"""create\(\s*["']{model}["']""",
        rf"get_model_class\(\s*[\"']{model}[\"']",
        rf"from\s+adlearn\.models\.{model}\s+import",
        rf"import\s+adlearn\.models\.{model}\b",
    ]
    assert any(re.search(pattern, source) for pattern in uses), (
        f"{path.name} must build its model from the package: adlearn.create({model!r}, ...) or "
        f"`from adlearn.models.{model} import ...`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_redefines_nothing_from_adlearn(path):
    tree = ast.parse(code_of(read(path)))
    package = adlearn_public_names()
    clashes = sorted(
        {
            f"{'class' if isinstance(node, ast.ClassDef) else 'def'} {node.name} (in {package[node.name]})"
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in package
        }
    )
    assert not clashes, f"{path.name} redefines what adlearn holds — import and call it instead: {'; '.join(clashes)}"


def test_every_notebook_is_in_the_book_in_course_order():
    entries = toc_entries()
    resolved: list[str] = []
    for chapter, entry in entries:
        kind, pattern = entry.split(":", 1)
        if not pattern.startswith("notebooks/"):
            continue
        matches = [p.stem for p in NOTEBOOKS if fnmatch.fnmatch(f"notebooks/{p.stem}", pattern)]
        assert matches, f"book/_toc.yml entry {entry!r} (chapter {chapter}) matches no notebook in notebooks/"
        resolved += sorted(matches)
    missing = [p.name for p in NOTEBOOKS if p.stem not in resolved]
    assert not missing, f"notebooks missing from book/_toc.yml: {missing}"
    twice = sorted({name for name in resolved if resolved.count(name) > 1})
    assert not twice, f"notebooks listed more than once in book/_toc.yml: {twice}"
    assert resolved == sorted(resolved), f"book/_toc.yml is not in course (number) order: {resolved}"


def test_course_page_suggests_every_notebook():
    """book/course.md's "Suggested order" table names every notebook (a new one must be placed in it)."""
    course = (REPO / "book" / "course.md").read_text()
    order = course.split("## Suggested order", 1)[1].split("\n## ", 1)[0]
    missing = [p.stem for p in NOTEBOOKS if f"</notebooks/{p.stem}>" not in order]
    assert not missing, f"book/course.md's suggested order does not list {missing}: add a row (and what to read first)"


def test_book_pages_exist():
    for chapter in {chapter for chapter, _ in toc_entries()} | {yaml.safe_load(TOC.read_text())["root"]}:
        assert (REPO / "book" / f"{chapter}.md").is_file(), f"book/{chapter}.md is in _toc.yml but missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    from adlearn.tools.clear_notebooks import problems

    found = problems(read(path))
    assert not found, (
        f"{path.name} is not stored clean ({'; '.join(found[:3])}). "
        f"Run: python -m adlearn.tools.clear_notebooks notebooks/"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_title_and_parameters(path):
    notebook = read(path)
    first = notebook.cells[0] if notebook.cells else None
    assert first is not None and first.cell_type == "markdown" and first.source.lstrip().startswith("# "), (
        f"{path.name}: the first cell must be a markdown title ('# ...'); the book shows it as the page title"
    )
    cell = parameters_cell(notebook)
    assert cell is not None, f"{path.name}: no code cell tagged 'parameters' (papermill needs one)"
    first_code = next(c for c in notebook.cells if c.cell_type == "code")
    assert cell is first_code, f"{path.name}: the 'parameters' cell must be the first code cell"
    defined = assigned_names(cell.source)
    required = COMPONENT_PARAMETERS if number(path) in COMPONENT_NUMBERS else ALL_PARAMETERS
    if number(path) in COMPONENT_NUMBERS and "backbone" in defined:
        required = required | {"pretrained"}
    missing = sorted(required - defined)
    assert not missing, f"{path.name}: the parameters cell lacks {missing} (see notebooks/README.md)"


def test_clear_notebooks_tool(tmp_path):
    from adlearn.tools.clear_notebooks import main, problems

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.cells[0].execution_count = 3
    notebook.cells[0].metadata["tags"] = ["parameters"]
    notebook.cells[0].metadata["execution"] = {"iopub.status.busy": "2025-01-01"}
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "dirty.ipynb"
    nbformat.write(notebook, path)
    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    cleaned = read(path)
    assert problems(cleaned) == []
    assert cleaned.cells[0].metadata["tags"] == ["parameters"]  # tags survive
    assert main([str(path), "--check"]) == 0


def test_report_prints_one_json_line_the_runner_collects(capsys):
    from adlearn.notebook import report
    from adlearn.tools.run_notebooks import find_report, results_table

    report(
        {
            "model": "padim",
            "image_auroc": 0.91234567,
            "pixel_aupro": float("nan"),
            "predictions": [1, 2],
            "n_test": 18.0,
        },
        category="weave",
        smoke=True,
    )
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    line = json.loads(printed)
    assert line == {
        "model": "padim",
        "category": "weave",
        "smoke": True,
        "image_auroc": 0.9123,
        "pixel_aupro": None,
        "n_test": 18,
    }
    executed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("report(...)")])
    executed.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="data: ok\n" + printed)]
    assert find_report(executed) == line
    table = results_table(
        [{"notebook": "10_padim.ipynb", "status": "ok", "seconds": 12.3, "report": line}], 12.3, {"smoke": True}
    )
    assert "| 10_padim.ipynb | ok | 12.3 | padim | weave | 0.912 |" in table


def test_sanitize_file_parses():
    import configparser

    from nbval.plugin import get_sanitize_patterns

    parser = configparser.RawConfigParser()
    parser.read(SANITIZE)
    assert parser.sections(), f"{SANITIZE} has no [sections]"
    patterns = get_sanitize_patterns(SANITIZE.read_text())  # how nbval reads it: 'regex:' then 'replace:'
    assert len(patterns) == len(parser.sections()), "each section needs a 'regex:' line directly followed by 'replace:'"
    for regex, _ in patterns:
        re.compile(regex)
    text = "data: weave from /root/.cache/adlearn/x-1 in 2.5 s, object at 0x7f3a2b1c9d30, shape (8, 3, 128, 128)"
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    assert text == "data: weave from PATH in DURATION, object at ADDRESS, shape (8, 3, 128, 128)", text


# ============================================================================ execution (slow)
_EXECUTION: dict = {}


def selected_notebooks() -> list[Path]:
    wanted = [name.strip() for name in os.environ.get("ADLEARN_NOTEBOOKS", "").split(",") if name.strip()]
    if not wanted:
        return NOTEBOOKS
    return [p for p in NOTEBOOKS if p.name in wanted or p.stem in wanted]


def execute_notebooks_once(echo=print) -> dict[str, dict]:
    """Run every notebook once per test session (smoke, CPU) into build/notebooks/; results by name.

    tests/test_book.py calls this too, so the book is built from the same execution.
    """
    if not _EXECUTION:
        from adlearn.tools.run_notebooks import run_all, timings_table

        jobs = int(os.environ.get("ADLEARN_NOTEBOOK_JOBS", "2"))
        paths = selected_notebooks()
        start = time.perf_counter()
        results = run_all(paths, EXECUTED_DIR, smoke=True, device="cpu", jobs=jobs, cell_timeout=600, echo=False)
        total = time.perf_counter() - start
        _EXECUTION.update({row["notebook"]: row for row in results})
        echo(
            f"\nnotebooks in smoke mode on CPU, {jobs} at a time -> {EXECUTED_DIR} (timings.json)\n"
            + timings_table(results, total)
        )
    return _EXECUTION


def _terminal_echo(request):
    """Print past pytest's output capture (the timing table belongs in the test log)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def echo(text: str) -> None:
        if capture is None:  # pytest -p no:capture
            print(text, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(text, flush=True)

    return echo


@pytest.fixture(scope="session")
def executed_notebooks(request) -> dict[str, dict]:
    return execute_notebooks_once(_terminal_echo(request))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, executed_notebooks):
    if path.name not in executed_notebooks:
        pytest.skip(f"{path.name} not selected by ADLEARN_NOTEBOOKS")
    row = executed_notebooks[path.name]
    assert row["status"] == "ok", (
        f"{path.name} failed after {row['seconds']:.0f} s (executed copy with the "
        f"error: {EXECUTED_DIR / path.name}):\n{row['error']}"
    )
    message = (
        f"{path.name} took {row['seconds']:.0f} s in smoke mode; aim for under 60 s on 2 CPU cores "
        "(shrink what is slow when smoke=True)"
    )
    if os.environ.get("ADLEARN_NOTEBOOK_MAX_S"):  # opt-in: a hard budget
        assert row["seconds"] <= float(os.environ["ADLEARN_NOTEBOOK_MAX_S"]), message
    elif row["seconds"] > 60:
        warnings.warn(message, stacklevel=1)


@pytest.mark.slow
def test_model_notebooks_report_their_metrics(executed_notebooks):
    missing = [
        name
        for name, row in executed_notebooks.items()
        if number(Path(name)) in MODEL_NUMBERS and row["status"] == "ok" and not row.get("report")
    ]
    assert not missing, (
        "model notebooks must end with `report(results, ...)` from adlearn.notebook "
        f"(one line of JSON with the metrics): {missing}"
    )


def checked_prefix(notebook):
    """The notebook up to (and with) its last ``# NBVAL_CHECK_OUTPUT`` cell: all nbval needs to re-run.

    The cells after it check nothing (the smoke run above already executed them), so re-running them
    would only cost time — in the model notebooks that is most of it (the training and the figures)."""
    cells = notebook.cells
    last = max(
        (i for i, cell in enumerate(cells) if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source),
        default=-1,
    )
    copy = nbformat.from_dict(notebook)
    copy.cells = cells[: last + 1]
    return copy


def test_checked_prefix_keeps_every_checked_cell_and_drops_the_rest():
    cells = [
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"),
        nbformat.v4.new_code_cell("x = 2"),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(x)"),
        nbformat.v4.new_code_cell("train()"),
        nbformat.v4.new_markdown_cell("done"),
    ]
    cut = checked_prefix(nbformat.v4.new_notebook(cells=cells))
    assert [c.source for c in cut.cells] == [c.source for c in cells[:4]]
    assert checked_prefix(nbformat.v4.new_notebook(cells=cells[4:])).cells == []


def _split(names: list[str], timings: dict[str, float], parts: int) -> list[list[str]]:
    """Share the notebooks among ``parts`` runners: longest first, each onto the least loaded one."""
    loads, groups = [0.0] * parts, [[] for _ in range(parts)]
    for name in sorted(names, key=lambda n: -timings.get(n, 0.0)):
        least = loads.index(min(loads))
        groups[least].append(name)
        loads[least] += timings.get(name, 0.0)
    return [group for group in groups if group]


@pytest.mark.slow
def test_nbval_reproduces_checked_outputs(executed_notebooks, request):
    if os.environ.get("ADLEARN_NBVAL", "1") == "0":
        pytest.skip("ADLEARN_NBVAL=0")
    ran = [name for name, row in executed_notebooks.items() if row["status"] == "ok"]
    if not ran:
        pytest.skip("no notebook ran successfully (their own tests fail)")
    with_checks = [name for name in ran if "NBVAL_CHECK_OUTPUT" in (EXECUTED_DIR / name).read_text(encoding="utf-8")]
    if not with_checks:
        pytest.skip("no executed notebook has a # NBVAL_CHECK_OUTPUT cell")
    jobs = max(1, int(os.environ.get("ADLEARN_NOTEBOOK_JOBS", "2")))
    timings = {name: row["seconds"] for name, row in executed_notebooks.items()}
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONHASHSEED="0")
    NBVAL_DIR.mkdir(parents=True, exist_ok=True)  # a sibling of EXECUTED_DIR: relative paths resolve alike
    for name in with_checks:
        nbformat.write(checked_prefix(read(EXECUTED_DIR / name)), NBVAL_DIR / name)
    processes = []
    for group in _split(with_checks, timings, jobs):
        command = [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(SANITIZE),
            "--nbval-cell-timeout",
            "600",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-q",
            "--no-header",
            "-rf",
            *[str(NBVAL_DIR / name) for name in group],
        ]
        processes.append(
            (
                group,
                subprocess.Popen(
                    command, cwd=NBVAL_DIR, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                ),
            )
        )
    failures = []
    for group, process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            failures.append(f"nbval over {group} (exit {process.returncode}):\n{output[-8000:]}")
    _terminal_echo(request)(
        f"nbval (--nbval-lax) re-ran {len(with_checks)} executed notebook(s), up to their last "
        f"checked cell, in {len(processes)} "
        f"process(es): {'ok' if not failures else 'FAILED'}"
    )
    assert not failures, (
        "cells marked # NBVAL_CHECK_OUTPUT printed something else on a second run (not "
        "deterministic, or a path/time leaked into them; see notebooks/nbval_sanitize.cfg):\n" + "\n\n".join(failures)
    )


@pytest.mark.slow
def test_timings_are_written(executed_notebooks):
    timings = json.loads((EXECUTED_DIR / "timings.json").read_text())
    assert {row["notebook"] for row in timings["notebooks"]} == set(executed_notebooks)
    assert timings["parameters"] == {"smoke": True, "device": "cpu"}
