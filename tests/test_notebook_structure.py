"""The structure every notebook of the course follows (notebooks/README.md, "The arc of a notebook").

A fast, static check: nothing is executed. Each rule below is a function ``notebook -> [problems]``;
the tests run every rule on every notebook in ``notebooks/``, and a self-check runs them on small
synthetic notebooks so that the checker itself is known to fail where it should.

Rules (``RULES``), by the notebook's number (00-02 introduction, 03-09 components, 10-39 models,
40-99 tooling):

- ``exercises``: one markdown cell with the heading ``## Exercises`` and a numbered list 1..N.
- ``solutions``: right after it, ``### Solutions`` (markdown tagged ``solution``); then for each
  exercise i, in order, a markdown cell tagged ``solution`` starting ``**Solution i.**`` followed by
  at least one code cell; every cell of the solutions is tagged ``solution``, every code cell there
  also ``hide-input`` (the book folds them); no cell before the exercises is tagged ``solution``.
- ``references``: the last cell is markdown starting ``## References`` with at least one list item;
  a model notebook names the paper (a link, an arXiv id, a DOI or the publisher's id) and the
  reference implementation's module (``anomalib.models.image.<model>``, or ``.video.`` for a video model).
- ``report`` (model notebooks): a code cell calls ``report(...)``, and every such cell comes before
  the exercises (so nothing the solutions train can change the reported run).
- ``numbers`` (model and tooling notebooks): a markdown heading ``## Numbers to expect`` before the
  exercises that states the ``smoke=False`` figures, and between it and the exercises a code cell that
  checks the smoke numbers (an ``assert``, or a ``# NBVAL_CHECK_OUTPUT`` cell).
- ``validation``: outside cells tagged ``exercise`` or ``solution``, no ``fit(...)`` call receives the
  test split as its validation data (``fit(train, test)``, ``val_data=test``, ``validation=test_set``...).
- ``smoke_overrides``: a parameter that smoke mode overrides (``if smoke: image_size = 128`` or
  ``image_size = 128 if smoke else image_size``) is printed by a ``print(...)`` in the same cell.
- ``lab_notes``: no issue numbers, "session", machine paths, anchors into docs/benchmarks.md's log,
  "older docs", "a reported bug".

``NOT_YET`` is the explicit allow-list of notebooks still being brought to these rules: each entry names
the rules a notebook does not meet yet. It only shrinks: fix a notebook, then delete its entry (a
pytest warning names every entry that is no longer needed).
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# Notebook -> the rules it does not meet yet (being fixed). Remove a rule once the notebook meets it.
NOT_YET: dict[str, set[str]] = {}

SOLUTION, EXERCISE, HIDE_INPUT = "solution", "exercise", "hide-input"
CHECKED_OUTPUT = "# NBVAL_CHECK_OUTPUT"
VALIDATION_KEYWORDS = {"val_data", "validation", "validation_data", "val_dataset", "val_set", "val"}
TEST_SPLIT = re.compile(r"^test($|_)")  # test, test_set, test_images, ...: names of the test split
LAB_NOTES = {
    "an issue number": re.compile(r"\bissues?\s*#?\d+|(?<![\w#&/])#\d{1,4}\b", re.IGNORECASE),
    "'session'": re.compile(r"\bsessions?\b", re.IGNORECASE),
    "a machine path": re.compile(r"/work/|/home/|/root/|/Users/|/tmp/"),
    "a link into docs/benchmarks.md's log": re.compile(r"benchmarks\.md#|\blab (log|notes?)\b", re.IGNORECASE),
    "'older docs'": re.compile(r"older docs", re.IGNORECASE),
    "'a reported bug'": re.compile(r"reported bug", re.IGNORECASE),
}


# ============================================================================ reading a notebook
def number(name: str) -> int:
    match = re.match(r"(\d\d)_", name)
    return int(match.group(1)) if match else -1


def kind(name: str) -> str:
    n = number(name)
    return "introduction" if n < 3 else "component" if n < 10 else "model" if n < 40 else "tooling"


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def heading_lines(cell) -> list[str]:
    return [line.strip() for line in cell.source.splitlines() if line.startswith("#")]


def find_heading(notebook, heading: str) -> list[int]:
    """Indices of the markdown cells holding the line ``heading`` (e.g. ``## Exercises``)."""
    return [
        i for i, cell in enumerate(notebook.cells) if cell.cell_type == "markdown" and heading in heading_lines(cell)
    ]


def python_of(cell) -> ast.Module | None:
    """A code cell's syntax tree, IPython magics and shell lines commented out (None if unparsable)."""
    source = "\n".join(
        ("# " + line) if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()
    )
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def calls_named(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of ``name(...)`` or ``something.name(...)``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == name)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
        )
    ]


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def parameters(notebook) -> set[str]:
    cell = next((c for c in notebook.cells if c.cell_type == "code" and "parameters" in tags(c)), None)
    tree = python_of(cell) if cell is not None else None
    if tree is None:
        return set()
    assigned = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                assigned |= names_in(target)
    return assigned


def exercises_index(notebook) -> int | None:
    found = find_heading(notebook, "## Exercises")
    return found[0] if len(found) == 1 else None


def numbered_items(text: str) -> list[int]:
    """The numbers of a markdown list's top-level items ('1. ...' at the start of a line)."""
    return [int(match.group(1)) for match in re.finditer(r"^(\d+)\.\s", text, flags=re.MULTILINE)]


# ============================================================================ the rules
def check_exercises(name: str, notebook) -> list[str]:
    found = find_heading(notebook, "## Exercises")
    if len(found) != 1:
        return [f"needs exactly one markdown cell with the heading '## Exercises' (found {len(found)})"]
    text = notebook.cells[found[0]].source.split("## Exercises", 1)[1]
    items = numbered_items(text)
    if not items or items != list(range(1, len(items) + 1)):
        return [f"the '## Exercises' cell must hold a numbered list 1..N, found the numbers {items}"]
    return []


def check_solutions(name: str, notebook) -> list[str]:
    start = exercises_index(notebook)
    if start is None:
        return ["no single '## Exercises' cell, so no solutions can follow it"]
    cells = notebook.cells
    problems = [
        f"cell {i} is tagged 'solution' but comes before the exercises"
        for i in range(start)
        if SOLUTION in tags(cells[i])
    ]
    exercises = numbered_items(cells[start].source.split("## Exercises", 1)[1])
    end = len(cells) - 1 if find_heading(notebook, "## References")[-1:] == [len(cells) - 1] else len(cells)
    part = list(range(start + 1, end))
    if not part or not (
        cells[part[0]].cell_type == "markdown"
        and cells[part[0]].source.lstrip().startswith("### Solutions")
        and SOLUTION in tags(cells[part[0]])
    ):
        return [*problems, "the cell after the exercises must be the markdown '### Solutions', tagged 'solution'"]
    solved: list[int] = []
    code_after: dict[int, int] = {}
    for i in part:
        cell = cells[i]
        if SOLUTION not in tags(cell):
            problems.append(f"cell {i} (in the solutions) is not tagged 'solution'")
        if cell.cell_type == "code":
            if HIDE_INPUT not in tags(cell):
                problems.append(f"code cell {i} (in the solutions) is not tagged 'hide-input'")
            if solved:
                code_after[solved[-1]] = code_after.get(solved[-1], 0) + 1
        else:
            match = re.match(r"\*\*Solution (\d+)\.\*\*", cell.source.lstrip())
            if match:
                solved.append(int(match.group(1)))
    if solved != exercises:
        problems.append(
            f"the solutions must be '**Solution i.**' cells for i = {exercises} in order (the exercises' "
            f"numbers); found {solved}"
        )
    missing_code = [i for i in solved if not code_after.get(i)]
    if missing_code:
        problems.append(f"solutions {missing_code} have no code cell (each needs one that computes it)")
    return problems


def check_references(name: str, notebook) -> list[str]:
    last = notebook.cells[-1] if notebook.cells else None
    if last is None or last.cell_type != "markdown" or not last.source.lstrip().startswith("## References"):
        return ["the last cell must be the markdown '## References'"]
    problems = []
    if not re.search(r"^\s*([-*]|\d+\.)\s+\S", last.source, flags=re.MULTILINE):
        problems.append("'## References' lists nothing (one item per source)")
    if kind(name) == "model":
        model = Path(name).stem[3:]
        if not re.search(r"https?://|arXiv|\bdoi\b|\bIEEE\b", last.source, flags=re.IGNORECASE):
            problems.append("'## References' must name the paper (a link, an arXiv id, a DOI or the publisher's id)")
        if not re.search(rf"anomalib\.models\.(image|video)\.{model}\b", last.source):
            problems.append(f"'## References' must name the reference implementation: anomalib.models.image.{model}")
    return problems


def check_report(name: str, notebook) -> list[str]:
    start = exercises_index(notebook)
    reporting = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (tree := python_of(cell)) is not None and calls_named(tree, "report")
    ]
    problems = []
    if kind(name) == "model" and not reporting:
        problems.append("no cell calls report(results, ...) (adlearn.notebook.report)")
    late = [i for i in reporting if start is None or i > start]
    if late:
        problems.append(f"report(...) must come before the exercises; cells {late} call it after them")
    return problems


def check_numbers(name: str, notebook) -> list[str]:
    if kind(name) not in ("model", "tooling"):
        return []
    start = exercises_index(notebook)
    found = find_heading(notebook, "## Numbers to expect")
    if not found or start is None or found[0] > start:
        return ["needs a markdown heading '## Numbers to expect' before the exercises"]
    problems = []
    if not re.search(r"smoke\s*=\s*False", notebook.cells[found[0]].source):
        problems.append("'## Numbers to expect' must state what smoke=False gives")
    checked = [
        i
        for i in range(found[0], start)
        if notebook.cells[i].cell_type == "code"
        and (
            notebook.cells[i].source.lstrip().startswith(CHECKED_OUTPUT)
            or any(
                isinstance(node, ast.Assert) for node in ast.walk(python_of(notebook.cells[i]) or ast.Module([], []))
            )
        )
    ]
    if not checked:
        problems.append(
            "between '## Numbers to expect' and the exercises, a code cell must check the smoke numbers "
            "(e.g. `if smoke: assert abs(results['image_auroc'] - 0.93) <= 0.05, results`, or nbval)"
        )
    return problems


def check_validation(name: str, notebook) -> list[str]:
    problems = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or {EXERCISE, SOLUTION} & set(tags(cell)):
            continue
        tree = python_of(cell)
        for call in calls_named(tree, "fit") if tree is not None else []:
            given = [keyword.value for keyword in call.keywords if keyword.arg in VALIDATION_KEYWORDS]
            given += call.args[1:2]
            if any(TEST_SPLIT.match(n) for value in given for n in names_in(value)):
                problems.append(
                    f"cell {i}: fit(...) validates on the test split ({ast.unparse(call)[:80]}); validate on "
                    "held-out normal images (val_fraction, with val_anomalies='synthetic' where the preset "
                    "uses it) — watching the test curve can be an exercise"
                )
    return problems


def check_smoke_overrides(name: str, notebook) -> list[str]:
    known = parameters(notebook)
    problems = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or {EXERCISE, SOLUTION, "parameters"} & set(tags(cell)):
            continue
        tree = python_of(cell)
        if tree is None:
            continue
        overridden: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "smoke" in names_in(node.test):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                        for target in inner.targets if isinstance(inner, ast.Assign) else [inner.target]:
                            overridden |= names_in(target)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.IfExp):
                if "smoke" in names_in(node.value.test):
                    for target in node.targets:
                        overridden |= names_in(target)
        printed = set().union(*(names_in(call) for call in calls_named(tree, "print"))) if overridden else set()
        silent = sorted((overridden & known) - printed)
        if silent:
            problems.append(
                f"cell {i}: smoke mode overrides the parameters {silent} without printing them "
                "(e.g. print(f'smoke mode: image_size={image_size}, ...'))"
            )
    return problems


def check_lab_notes(name: str, notebook) -> list[str]:
    problems = []
    for i, cell in enumerate(notebook.cells):
        for what, pattern in LAB_NOTES.items():
            match = pattern.search(cell.source)
            if match:
                context = cell.source[max(0, match.start() - 30) : match.end() + 30].replace("\n", " ")
                problems.append(f"cell {i} holds {what}: ...{context}...")
    return problems


RULES: dict[str, Callable[[str, object], list[str]]] = {
    "exercises": check_exercises,
    "solutions": check_solutions,
    "references": check_references,
    "report": check_report,
    "numbers": check_numbers,
    "validation": check_validation,
    "smoke_overrides": check_smoke_overrides,
    "lab_notes": check_lab_notes,
}


def problems_of(name: str, notebook) -> dict[str, list[str]]:
    """Every rule's problems with one notebook (rules without problems left out)."""
    return {rule: found for rule, check in RULES.items() if (found := check(name, notebook))}


# ============================================================================ the course's notebooks
def test_allow_list_names_existing_notebooks_and_rules():
    names = {p.name for p in NOTEBOOKS}
    unknown_notebooks = sorted(set(NOT_YET) - names)
    assert not unknown_notebooks, f"NOT_YET names notebooks that do not exist: {unknown_notebooks}"
    unknown_rules = {name: sorted(rules - set(RULES)) for name, rules in NOT_YET.items() if rules - set(RULES)}
    assert not unknown_rules, f"NOT_YET names unknown rules {unknown_rules}; the rules are {sorted(RULES)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_course_structure(path):
    found = problems_of(path.name, nbformat.read(path, as_version=4))
    allowed = NOT_YET.get(path.name, set())
    no_longer_needed = sorted(allowed - set(found))
    if no_longer_needed:
        warnings.warn(
            f"{path.name} now meets {no_longer_needed}: remove them from NOT_YET in {Path(__file__).name}",
            stacklevel=1,
        )
    failing = {rule: messages for rule, messages in found.items() if rule not in allowed}
    assert not failing, f"{path.name} breaks the notebook structure (notebooks/README.md):\n" + "\n".join(
        f"  [{rule}] {message}" for rule, messages in failing.items() for message in messages
    )


# ============================================================================ self-check of the checker
def md(source: str, *cell_tags: str):
    cell = nbformat.v4.new_markdown_cell(source)
    if cell_tags:
        cell.metadata["tags"] = list(cell_tags)
    return cell


def code(source: str, *cell_tags: str):
    cell = nbformat.v4.new_code_cell(source)
    if cell_tags:
        cell.metadata["tags"] = list(cell_tags)
    return cell


def model_notebook(**change) -> list:
    """The cells of a small model notebook that meets every rule; ``change`` swaps named parts."""
    parts = {
        "title": [md("# PaDiM — a toy")],
        "parameters": [code("smoke = True\nimage_size = 256\nseed = 0", "parameters")],
        "setup": [
            code(
                "%matplotlib inline\nimage_size = 128 if smoke else image_size\n"
                "print(f'smoke mode: image_size={image_size}')"
            )
        ],
        "fit": [code("model = create('padim')\nmodel.fit(train)\nresults = evaluate(model, test)")],
        "report": [code("report(results, smoke=smoke)")],
        "numbers": [
            md("## Numbers to expect\n\nSmoke mode: image AUROC 0.93. With `smoke=False`: 0.998."),
            code("if smoke:\n    assert abs(results['image_auroc'] - 0.93) <= 0.05, results"),
        ],
        "exercises": [md("## Exercises\n\n1. Change a thing.\n2. Watch the test curve.")],
        "solutions": [
            md("### Solutions", SOLUTION),
            md("**Solution 1.** It changes.", SOLUTION),
            code("print(1)", SOLUTION, HIDE_INPUT),
            md("**Solution 2.** For learning only.", SOLUTION),
            code("create('padim').fit(train, val_data=test)", SOLUTION, HIDE_INPUT),
        ],
        "references": [
            md(
                "## References\n\n- Defard et al., PaDiM, Sec. 3, Eq. 1, https://arxiv.org/abs/2011.08785\n"
                "- anomalib.models.image.padim"
            )
        ],
    }
    parts.update(change)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [cell for part in parts.values() for cell in part]
    return notebook


def test_checker_accepts_a_notebook_that_follows_every_rule():
    assert problems_of("10_padim.ipynb", model_notebook()) == {}


def test_checker_rejects_a_missing_solution():
    only_first = [
        md("### Solutions", SOLUTION),
        md("**Solution 1.** It changes.", SOLUTION),
        code("1", SOLUTION, HIDE_INPUT),
    ]
    found = problems_of("10_padim.ipynb", model_notebook(solutions=only_first))
    assert set(found) == {"solutions"}, found
    no_code = [md("### Solutions", SOLUTION), md("**Solution 1.** a", SOLUTION), md("**Solution 2.** b", SOLUTION)]
    assert "solutions [1, 2] have no code cell" in " ".join(
        problems_of("10_padim.ipynb", model_notebook(solutions=no_code))["solutions"]
    )
    untagged = [
        md("### Solutions", SOLUTION),
        md("**Solution 1.** a", SOLUTION),
        code("1", SOLUTION),
        md("**Solution 2.** b", SOLUTION),
        code("2", SOLUTION, HIDE_INPUT),
    ]
    assert "not tagged 'hide-input'" in " ".join(
        problems_of("10_padim.ipynb", model_notebook(solutions=untagged))["solutions"]
    )


def test_checker_rejects_validation_on_the_test_split():
    for call in (
        "model.fit(train, val_data=test)",
        "model.fit(train, test)",
        "model.fit(train, validation=test_images[:4])",
    ):
        found = problems_of("23_cflow.ipynb", model_notebook(fit=[code(f"model = create('cflow')\n{call}")]))
        assert "validation" in found, call
    held_out = code("model.fit(train)\nmodel.fit(train, val_data=held_out, val_metric='pixel_auroc')")
    assert "validation" not in problems_of("23_cflow.ipynb", model_notebook(fit=[held_out]))
    exercise = code("model.fit(train, val_data=test)", EXERCISE)
    assert "validation" not in problems_of("23_cflow.ipynb", model_notebook(fit=[exercise]))


def test_checker_rejects_a_report_after_the_exercises():
    parts = model_notebook()
    late = model_notebook(report=[], references=[*parts.cells[-1:]])
    late.cells.insert(len(late.cells) - 1, code("report(results)", SOLUTION, HIDE_INPUT))
    found = problems_of("10_padim.ipynb", late)
    assert "report" in found and "after them" in found["report"][0], found
    assert "report" in problems_of("10_padim.ipynb", model_notebook(report=[]))  # a model notebook must report


def test_checker_rejects_the_other_breaches():
    def breaks(rule, name="10_padim.ipynb", **change):
        return rule in problems_of(name, model_notebook(**change))

    assert breaks("exercises", exercises=[md("## Exercises\n\n1. a\n3. b")])
    assert breaks("solutions", exercises=[md("## Exercises\n\n1. a\n2. b\n3. c")])  # solution 3 missing
    assert breaks("numbers", numbers=[])
    assert breaks("numbers", numbers=[md("## Numbers to expect\n\nsmoke=False: 0.99"), code("print(results)")])
    assert not breaks("numbers", name="02_feature_extraction.ipynb", numbers=[])  # introduction notebooks
    assert breaks("references", references=[md("## References\n\n- arXiv:2011.08785")])  # no anomalib module
    assert breaks("references", references=[md("## References\n\n- anomalib.models.image.padim")])  # no paper
    assert not breaks("references", name="03_pca.ipynb", references=[md("## References\n\n- Bishop (2006), Sec. 12.1")])
    assert breaks("smoke_overrides", setup=[code("image_size = 128 if smoke else image_size")])
    assert breaks("smoke_overrides", setup=[code("if smoke:\n    image_size = 128")])
    for note in ("see issue 12", "as in session 9", "read /work/shared/x", "docs/benchmarks.md#log", "a reported bug"):
        assert breaks("lab_notes", title=[md(f"# PaDiM\n\n{note}")]), note
    assert not breaks("lab_notes", title=[md("# PaDiM\n\nlog p(x); colour #1f77b4; `docs/benchmarks.md`")])
