"""Strip outputs, execution counts and widget state from notebooks, in place.

    python -m adlearn.tools.clear_notebooks notebooks/            # every *.ipynb in the folder
    python -m adlearn.tools.clear_notebooks notebooks/10_padim.ipynb --check   # exit 1 if dirty

Notebooks are stored clean (tests/test_notebooks.py checks it): outputs belong to the executed copies
in ``build/notebooks/`` and to the book, not to git. Cell tags (``parameters``) and the notebook's
kernelspec are kept; papermill's per-run metadata is dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Notebook-level metadata a run leaves behind (widget state, papermill's record of the run).
RUN_METADATA = ("widgets", "papermill")
# Cell-level metadata a run leaves behind (timings, scroll state, papermill's per-cell record).
CELL_RUN_METADATA = ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime")


def problems(notebook) -> list[str]:
    """What is not clean in a notebook (an empty list means it is stored as it should be)."""
    found = [f"notebook metadata '{key}'" for key in RUN_METADATA if key in notebook.metadata]
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {index} has outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {index} has an execution count")
        found += [f"cell {index} metadata '{key}'" for key in CELL_RUN_METADATA if key in cell.metadata]
    return found


def clear(notebook):
    """Return ``notebook`` with outputs, counts and run metadata removed (modified in place)."""
    for key in RUN_METADATA:
        notebook.metadata.pop(key, None)
    for cell in notebook.cells:
        for key in CELL_RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return notebook


def notebook_paths(targets: list[str]) -> list[Path]:
    paths: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            paths += sorted(p for p in path.glob("*.ipynb"))
        elif path.suffix == ".ipynb" and path.is_file():
            paths.append(path)
        else:
            raise SystemExit(f"{target}: not a notebook or a folder of notebooks")
    return paths


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(prog="python -m adlearn.tools.clear_notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", help="notebooks or folders of notebooks")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook is not clean")
    args = parser.parse_args(argv)
    dirty = 0
    for path in notebook_paths(args.targets):
        notebook = nbformat.read(path, as_version=4)
        found = problems(notebook)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: {'; '.join(found[:4])}{' ...' if len(found) > 4 else ''}")
        else:
            nbformat.write(clear(notebook), path)
            print(f"cleared {path}")
    if args.check and dirty:
        print(f"{dirty} notebook(s) not clean: run python -m adlearn.tools.clear_notebooks {' '.join(args.targets)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
