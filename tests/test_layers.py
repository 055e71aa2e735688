"""The layers of ``docs/design.md``, kept: every import in ``adlearn/`` goes down, or sideways without a cycle.

The layer table is parsed out of ``docs/design.md`` (section "Layers"), so the page and the code cannot
drift apart. Every ``adlearn/**/*.py`` file is read with ``ast``: imports at module level and inside
functions, relative imports (``from . import x``), the lazy exports of a package's ``_LAZY`` table and
``importlib.import_module("adlearn....")`` calls. Importing ``a.b.c`` is an edge to ``a.b.c`` only (the
parent packages Python runs first are not counted: a package's own ``__init__`` may import its parts). An
import under ``if TYPE_CHECKING:`` must not go up a layer either, but it never runs, so it closes no cycle.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adlearn"
DESIGN = REPO / "docs" / "design.md"

# Cycles tolerated while a change under way removes them (none today); each entry names the modules of one
# cycle, e.g. frozenset({"adlearn.benchmark", "adlearn.cli"}). A listed cycle that no longer occurs fails
# `test_known_exceptions_still_occur`: delete it then.
KNOWN_EXCEPTIONS: list[frozenset[str]] = []


# =========================================================================== the table
def parse_layer_table(markdown: str) -> dict[str, int]:
    """``{"adlearn.data": 1, ...}`` from the first table under the ``## Layers`` heading."""
    match = re.search(r"^## Layers.*?$(.*?)(?=^## )", markdown, flags=re.M | re.S)
    if match is None:
        raise ValueError("docs/design.md has no '## Layers' section")
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    if len(rows) < 3:
        raise ValueError("the '## Layers' section has no table")
    header = [cell.strip().lower() for cell in rows[0].strip("|").split("|")]
    if header[:2] != ["layer", "modules"]:
        raise ValueError(f"the layer table's first columns must be 'layer | modules', got {header[:2]}")
    layers: dict[str, int] = {}
    for row in rows[2:]:
        layer, modules = (cell.strip() for cell in row.strip("|").split("|")[:2])
        for name in re.findall(r"`([\w.]+)`", modules):
            if name in layers:
                raise ValueError(f"{name} is in the layer table twice")
            layers[name] = int(layer)
    return layers


def layer_of(module: str, table: dict[str, int]) -> tuple[str, int] | None:
    """The table entry covering ``module`` and its layer: the longest entry that is ``module`` or a
    package above it. The root package's entry covers its ``__init__`` only."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        entry = ".".join(parts[:end])
        if entry in table and (end > 1 or module == entry):
            return entry, table[entry]
    return None


# =========================================================================== the imports
@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # the most specific adlearn module named
    path: str  # the file, from the package's parent folder
    line: int
    text: str  # the statement as written
    type_only: bool = False  # under `if TYPE_CHECKING:`: a layer dependency, but never run (no cycle)

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def discover_modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every ``.py`` file under ``package``."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def lazy_table(tree: ast.Module, package: str) -> dict[str, tuple[str, int]]:
    """A package's ``_LAZY`` exports: exported name -> (the module that defines it, the entry's line).

    Values are a submodule name (``"datasets"``) or a ``("adlearn.module", "attribute")`` pair."""
    table = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(target, ast.Name) and target.id == "_LAZY" for target in targets):
                continue
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    table[key.value] = (f"{package}.{value.value}", key.lineno)
                elif isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Constant):
                    table[key.value] = (value.elts[0].value, key.lineno)
    return table


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """The ids of every node inside an ``if TYPE_CHECKING:`` block."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }


def named_imports(tree: ast.Module, here: str) -> list[tuple[ast.AST, str, list[str] | None, str]]:
    """``(node, target, names or None, text)`` for every import statement and constant
    ``import_module("...")`` call in ``tree``; ``here`` is the package relative imports start from."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, None, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            found.append((node, target, names, f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node, node.args[0].value, None, f"import_module({node.args[0].value!r})"))
    return found


def collect_imports(package: Path) -> tuple[dict[str, tuple[Path, bool]], list[Import]]:
    """Every module of ``package`` and every import of the package's own modules they make."""
    root = package.name
    modules = discover_modules(package)
    trees = {
        name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, (path, _) in modules.items()
    }
    lazy = {name: lazy_table(trees[name], name) for name, (_, is_package) in modules.items() if is_package}

    def reached(target: str, names: list[str] | None) -> list[str]:
        """The modules an import reaches: ``import a.b.c`` the most specific module of ``a.b.c``;
        ``from target import names`` each name's submodule or lazy export, else ``target``."""
        found = []
        for name in names or [None]:
            if name is not None and f"{target}.{name}" in modules:
                found.append(f"{target}.{name}")
            elif name is not None and name in lazy.get(target, {}):
                found.append(lazy[target][name][0])
            else:
                module = target
                while module not in modules and "." in module:
                    module = module.rpartition(".")[0]
                found.append(module)
        return list(dict.fromkeys(found))

    imports = []
    for importer, (path, is_package) in modules.items():
        where = path.relative_to(package.parent).as_posix()
        type_only = type_checking_nodes(trees[importer])
        here = importer if is_package else importer.rpartition(".")[0]
        for node, target, names, text in named_imports(trees[importer], here):
            if target == root or target.startswith(root + "."):
                for imported in reached(target, names):
                    imports.append(Import(importer, imported, where, node.lineno, text, id(node) in type_only))
        for name, (imported, line) in lazy.get(importer, {}).items():
            imports.append(Import(importer, imported, where, line, f"_LAZY[{name!r}] -> {imported}"))
    return modules, imports


# =========================================================================== the checks
def upward_imports(imports: list[Import], table: dict[str, int]) -> list[str]:
    problems = []
    for item in imports:
        source, target = layer_of(item.importer, table), layer_of(item.imported, table)
        if source is None or target is None:
            continue  # reported by the coverage check
        if target[1] > source[1]:
            problems.append(
                f"{item.where()}: `{item.text}` — {item.importer} (layer {source[1]}, {source[0]}) imports "
                f"{item.imported} (layer {target[1]}, {target[0]})"
            )
    return problems


def find_cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of more than one node (Tarjan)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in edges.get(node, {}):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)

    cycles = []
    for group in groups:  # a shortest path from the group's first member back to itself, inside the group
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for successor in sorted(edges.get(node, {})):
                    if successor == start:
                        cycle = [*paths[node], start]
                        break
                    if successor in group and successor not in paths:
                        paths[successor] = [*paths[node], successor]
                        following.append(successor)
                if cycle:
                    break
            frontier = following
        cycles.append(cycle)
    return cycles


def module_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    edges: dict[str, dict[str, Import]] = {}
    for item in imports:
        if item.imported != item.importer and not item.type_only:
            edges.setdefault(item.importer, {}).setdefault(item.imported, item)
    return edges


def describe(cycle: list[str], edges: dict[str, dict[str, Import]]) -> str:
    steps = [f"{a} -> {b} ({edges[a][b].where()}: `{edges[a][b].text}`)" for a, b in zip(cycle, cycle[1:])]
    return "cycle " + " -> ".join(cycle) + ":\n    " + "\n    ".join(steps)


def import_cycles(imports: list[Import], known=()) -> list[str]:
    """One report per cycle between modules; the imports inside a ``known`` cycle (between two of its
    modules) are left out first."""
    imports = [item for item in imports if not any({item.importer, item.imported} <= cycle for cycle in known)]
    edges = module_graph(imports)
    return [describe(cycle, edges) for cycle in find_cycles(edges)]


def uncovered(modules, table: dict[str, int]) -> list[str]:
    return [name for name in modules if layer_of(name, table) is None]


# =========================================================================== the tests
@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    return parse_layer_table(DESIGN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def code():
    return collect_imports(PACKAGE)


def test_every_adlearn_module_is_in_the_layer_table(table, code):
    modules, _ = code
    missing = uncovered(modules, table)
    assert not missing, f"modules missing from the layer table in docs/design.md: {missing}"


def test_every_layer_table_entry_is_a_module(table, code):
    modules, _ = code
    stale = [entry for entry in table if entry not in modules]
    assert not stale, f"docs/design.md's layer table names modules that do not exist: {stale}"


def test_no_import_goes_up_a_layer(table, code):
    _, imports = code
    problems = upward_imports(imports, table)
    assert not problems, "imports that go up a layer:\n" + "\n".join(problems)


def test_no_import_cycles(table, code):
    _, imports = code
    problems = import_cycles(imports, KNOWN_EXCEPTIONS)
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_known_exceptions_still_occur(code):
    _, imports = code
    cycles = {frozenset(cycle) for cycle in find_cycles(module_graph(imports))}
    gone = [sorted(known) for known in KNOWN_EXCEPTIONS if known not in cycles]
    assert not gone, f"these cycles are gone: delete them from KNOWN_EXCEPTIONS: {gone}"


def external_packages(path: Path) -> set[str]:
    """The top-level names of everything ``path`` imports (relative imports left out)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize(
    ("module", "allowed"),
    [  # what docs/design.md says these modules import
        ("machine.py", set()),  # "imports only the standard library"
        ("cache.py", set()),
        ("_lazy.py", set()),
        ("metrics.py", {"numpy", "scipy"}),  # "the standard library, NumPy and SciPy only"
    ],
)
def test_the_bottom_modules_import_only_what_the_design_says(module, allowed):
    assert external_packages(PACKAGE / module) - set(sys.stdlib_module_names) <= allowed


# =========================================================================== the checks can fail
TOY_TABLE = """# toy

## Layers (imports only go down)

| layer | modules | what |
|---|---|---|
| 0 | `toypkg.low` | the bottom |
| 1 | `toypkg`, `toypkg.high`, `toypkg.sub` | the top |

## Next section
"""

TOY_FILES = {
    "__init__.py": '_LAZY = {\n    "Thing": "low",\n}\n',
    "low.py": "def helper():\n    from .high import shout  # up a layer, inside a function\n    return shout\n",
    "high.py": "from . import low\n\n\ndef shout():\n    return low\n",
    "sub/__init__.py": "",
    "sub/a.py": "from toypkg.sub import b\n",
    "sub/b.py": "import importlib\n\nimport toypkg.sub.a\n\nimportlib.import_module('toypkg.high')\n",
    "sub/c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from toypkg.sub.d import D\n",
    "sub/d.py": "from toypkg.sub.c import C\n",
    "extra.py": "",
}


@pytest.fixture
def toy(tmp_path):
    package = tmp_path / "toypkg"
    for name, text in TOY_FILES.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return collect_imports(package)


def test_self_check_reads_every_kind_of_import(toy):
    _, imports = toy
    edges = {(item.importer, item.imported, item.line) for item in imports}
    assert edges == {
        ("toypkg", "toypkg.low", 2),  # a lazy export
        ("toypkg.low", "toypkg.high", 2),  # relative, inside a function
        ("toypkg.high", "toypkg.low", 1),  # `from . import low`: a submodule
        ("toypkg.sub.a", "toypkg.sub.b", 1),
        ("toypkg.sub.b", "toypkg.sub.a", 3),
        ("toypkg.sub.b", "toypkg.high", 5),  # importlib.import_module
        ("toypkg.sub.c", "toypkg.sub.d", 4),  # for type checkers only: no cycle with d -> c
        ("toypkg.sub.d", "toypkg.sub.c", 1),
    }
    assert [item.type_only for item in imports if item.importer == "toypkg.sub.c"] == [True]


def test_self_check_catches_an_upward_import_a_cycle_and_a_missing_module(toy):
    modules, imports = toy
    table = parse_layer_table(TOY_TABLE)
    assert table == {"toypkg.low": 0, "toypkg": 1, "toypkg.high": 1, "toypkg.sub": 1}

    assert upward_imports(imports, table) == [
        "toypkg/low.py:2: `from .high import shout` — toypkg.low (layer 0, toypkg.low) imports toypkg.high "
        "(layer 1, toypkg.high)"
    ]
    cycles = import_cycles(imports)
    assert len(cycles) == 2  # low <-> high, and a <-> b
    assert any(text.startswith("cycle toypkg.sub.a -> toypkg.sub.b -> toypkg.sub.a:") for text in cycles)
    assert any("toypkg/sub/b.py:3: `import toypkg.sub.a`" in text for text in cycles)
    assert len(import_cycles(imports, [frozenset({"toypkg.sub.a", "toypkg.sub.b"})])) == 1  # a known one is left out
    assert uncovered(modules, table) == ["toypkg.extra"]
    assert layer_of("toypkg.sub.a", table) == ("toypkg.sub", 1)
    assert layer_of("toypkg.other", table) is None  # the root's entry covers its __init__ only


def test_a_missing_or_malformed_table_is_a_clear_error():
    with pytest.raises(ValueError, match="no '## Layers' section"):
        parse_layer_table("# nothing here\n")
    with pytest.raises(ValueError, match="'layer \\| modules'"):
        parse_layer_table("## Layers\n\n| module | layer |\n|---|---|\n| `a` | 0 |\n\n## End\n")
    with pytest.raises(ValueError, match="twice"):
        parse_layer_table("## Layers\n\n| layer | modules |\n|---|---|\n| 0 | `a` |\n| 1 | `a` |\n\n## End\n")
