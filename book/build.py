"""Build the book's HTML from the executed notebooks (nothing is executed twice).

    python book/build.py                 # uses build/notebooks/ (run the notebooks first)
    python book/build.py --execute       # run every notebook in smoke mode first, then build
    python book/build.py --execute --full   # the full experiments (long; a GPU helps)

Steps:

1. (``--execute``) `adlearn.tools.run_notebooks` runs ``notebooks/*.ipynb`` with papermill into
   ``build/notebooks/``. ``make test`` does the same in tests/test_notebooks.py, so the tests and the
   book share one execution.
2. Copy the executed notebooks into ``book/notebooks/`` (git-ignored), replacing each live-widget
   output with a one-line note: a widget needs a kernel. The page shows the picture the widget drew
   when it was created (the runner records it as a plain output) and the static small-multiples
   figure that follows every widget cell. tqdm progress bars are dropped. Papermill's injected
   ``# Parameters`` cell is tagged ``remove-cell``: the page shows the notebook's own parameters cell.
3. Record the runner's timings (``build/notebooks/timings.json``) per mode in
   ``build/course-timings.json`` and write the table the course page includes
   (``book/_generated/timings.md``): smoke and full wall time of every notebook. What this machine has not
   run comes from ``book/measured-timings.json`` (committed measurements, folded in with
   ``python book/build.py --record-measured DIR``), else, for a model notebook's full mode, the benchmark's
   time for the same preset on the bottle marked as an estimate, else "not measured yet".
4. ``jupyter-book build book/`` (1.x, ``execute_notebooks: off``) -> ``book/_build/html/``. MathJax is
   served from the book itself (``sphinx-mathjax-offline``, a PyPI package that ships MathJax 3):
   the equations typeset without a network.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
REPO = BOOK.parent
EXECUTED = REPO / "build" / "notebooks"
SOURCE_NOTEBOOKS = REPO / "notebooks"
HTML = BOOK / "_build" / "html"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[live widget: open the notebook in JupyterLab to move its controls]"
INJECTED_TAG = "injected-parameters"  # papermill's tag on the cell it adds after the parameters cell
HIDDEN_TAG = "remove-cell"  # myst-nb leaves a cell with this tag out of the page
SOLUTION_TAG = "solution"  # the notebooks' worked solutions (notebooks/README.md)
TIMINGS_RECORD = REPO / "build" / "course-timings.json"
MEASURED_TIMINGS = BOOK / "measured-timings.json"  # committed: runs worth keeping (full mode, a GPU)
BENCHMARK_CELLS = REPO / "benchmarks" / "results" / "bottle" / "cells"
TIMINGS_PAGE = BOOK / "_generated" / "timings.md"


class BookBuildError(RuntimeError):
    """The book cannot be built (missing executed notebooks, a failing jupyter-book run)."""


# tqdm's notebook bars are widgets too; their text form ("fit:  40%|####  | 2/5 [...]") says nothing
# once the run is over, so they are dropped rather than announced as an interactive widget.
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


def collapse_solutions(notebook):
    """Fold every worked solution away until the reader asks: a solution's explanation (markdown)
    becomes a closed ``dropdown``, its code cell a closed toggle of input and output (``hide-cell``).
    The "Solutions" heading stays visible."""
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if SOLUTION_TAG not in tags:
            continue
        if cell.cell_type == "code":
            cell.metadata["tags"] = [t for t in tags if t not in ("hide-input", "hide-output")] + ["hide-cell"]
        elif not cell.source.lstrip().startswith("#"):
            title = re.match(r"\*\*(.+?)\*\*", cell.source.strip())
            fence = "`" * (max((len(m) for m in re.findall(r"`{3,}", cell.source)), default=2) + 1)
            fence = max(fence, "````", key=len)
            cell.source = f"{fence}{{dropdown}} {title.group(1) if title else 'Solution'}\n{cell.source}\n{fence}"
    return notebook


def without_live_widgets(notebook):
    """Drop progress-bar widgets, replace other widget views by a text note, drop the widget state;
    hide papermill's injected parameters cell (a second ``parameters`` cell says nothing to a reader)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if INJECTED_TAG in tags and HIDDEN_TAG not in tags:
            tags.append(HIDDEN_TAG)
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                if PROGRESS_BAR.search(str(data.get("text/plain", ""))):
                    continue
                output["data"] = {"text/plain": WIDGET_NOTE}
            kept.append(output)
        cell.outputs = kept
    return notebook


def copy_executed(
    executed_dir: Path = EXECUTED, dest: Path = BOOK / "notebooks", names: list[str] | None = None
) -> list[Path]:
    """Copy the executed notebooks into the book's source tree (``names``: these only; default: every
    notebook of notebooks/, each of which must have an executed copy)."""
    import nbformat

    sources = sorted(SOURCE_NOTEBOOKS.glob("*.ipynb"))
    if names is not None:
        sources = [p for p in sources if p.name in set(names)]
    missing = [p.name for p in sources if not (executed_dir / p.name).is_file()]
    if missing:
        raise BookBuildError(
            f"no executed copy in {executed_dir} of: {', '.join(missing)}. Run the notebooks "
            f"first: python book/build.py --execute (or make book)"
        )
    stale = [p.name for p in sources if p.stat().st_mtime > (executed_dir / p.name).stat().st_mtime]
    if stale:
        print(f"warning: edited since they were executed (the book shows the older run): {', '.join(stale)}")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.ipynb"):
        old.unlink()
    copied = []
    for source in sources:
        notebook = nbformat.read(executed_dir / source.name, as_version=4)
        nbformat.write(collapse_solutions(without_live_widgets(notebook)), dest / source.name)
        copied.append(dest / source.name)
    write_timings_page(record_timings(executed_dir))
    return copied


# ------------------------------------------------------------------------------- the course's timings
def record_timings(executed_dir: Path = EXECUTED, record: Path = TIMINGS_RECORD) -> dict:
    """Fold the runner's ``timings.json`` into ``record`` under its mode ("smoke" or "full").

    One entry per notebook that ran without error: wall seconds, device, the machine's CPU count, how
    many notebooks ran at a time, and the date. A run of some notebooks updates only those, so the
    record keeps the last measurement of each notebook in each mode. Returns the whole record.
    """
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = {}
    try:
        run = json.loads((Path(executed_dir) / "timings.json").read_text())
    except (OSError, ValueError):
        return data  # no run yet: the record (perhaps empty) stands
    parameters = run.get("parameters", {})
    mode = "smoke" if parameters.get("smoke", True) else "full"
    stamp = datetime.datetime.fromtimestamp((Path(executed_dir) / "timings.json").stat().st_mtime)
    entries = data.setdefault(mode, {})
    load = [value for value in run.get("load_average") or [] if value is not None]
    for row in run.get("notebooks", []):
        if row.get("status") != "ok":
            continue
        entries[row["notebook"]] = {
            "seconds": float(row["seconds"]),
            "device": str(parameters.get("device")),
            "cpus": run.get("cpus") or os.cpu_count(),
            "jobs": run.get("jobs"),
            "date": stamp.strftime("%Y-%m-%d"),
            **({"load": max(load)} if load else {}),
        }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data


def merged_timings(local: dict, measured_path: Path = MEASURED_TIMINGS) -> dict:
    """The committed measurements, overridden notebook by notebook by this machine's own record."""
    try:
        merged = json.loads(Path(measured_path).read_text())
    except (OSError, ValueError):
        merged = {}
    for mode, entries in local.items():
        merged.setdefault(mode, {}).update(entries)
    return merged


def benchmark_estimates(cells: Path = BENCHMARK_CELLS) -> dict[str, float]:
    """Seconds of each model's committed bottle cell (seed 0: fit and predict with the ``cpu`` preset, the
    recipe a model notebook's full mode runs), by model name: the estimate of a full run not yet measured."""
    estimates = {}
    for path in sorted(Path(cells).glob("*__bottle__seed0.json")):
        cell = json.loads(path.read_text())
        if cell.get("status") == "ok" and cell.get("cell_seconds"):
            estimates[cell["model"]] = float(cell["cell_seconds"])
    return estimates


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def timings_table(record: dict, notebooks: list[Path] | None = None, estimates: dict | None = None) -> str:
    """Markdown: one row per notebook with its smoke and full wall time ("not measured yet" where the
    record has none; for a model notebook's full mode, ``estimates[model]`` marked "est." if given), and
    a note on how each was measured."""
    import nbformat

    notebooks = sorted(SOURCE_NOTEBOOKS.glob("*.ipynb")) if notebooks is None else notebooks
    lines = ["| notebook | smoke mode | full mode |", "|---|---|---|"]
    totals = {"smoke": 0.0, "full": 0.0}
    complete = {"smoke": True, "full": True}
    estimated = []
    for path in notebooks:
        title = nbformat.read(path, as_version=4).cells[0].source.lstrip().splitlines()[0].lstrip("# ")
        title = title.split(" — ")[0].strip()
        cells = []
        for mode in ("smoke", "full"):
            entry = record.get(mode, {}).get(path.name)
            if entry is None:
                complete[mode] = False
                estimate = (estimates or {}).get(path.stem[3:]) if mode == "full" else None
                estimated += [path.stem[3:]] if estimate else []
                cells.append(f"≈ {_duration(estimate)} (est.)" if estimate else "not measured yet")
                continue
            totals[mode] += entry["seconds"]
            where = "" if entry["device"] == "cpu" else f" ({entry['device']})"
            cells.append(_duration(entry["seconds"]) + where)
        lines.append(f"| {path.stem[:2]} {{doc}}`{title} </notebooks/{path.stem}>` | {cells[0]} | {cells[1]} |")
    total_cells = [(_duration(totals[m]) if complete[m] else "—") for m in ("smoke", "full")]
    lines.append(f"| **all notebooks, one after the other** | {total_cells[0]} | {total_cells[1]} |")
    notes = []
    for mode in ("smoke", "full"):
        entries = list(record.get(mode, {}).values())
        if not entries:
            command = "make book FULL=1" if mode == "full" else "make book"
            notes.append(
                f"- {mode} mode: not measured yet (no `{command}` run has been recorded on the "
                f"machine that built this book)."
            )
            continue
        cpus = sorted({e["cpus"] for e in entries if e.get("cpus")})
        jobs = sorted({e["jobs"] for e in entries if e.get("jobs")})
        dates = sorted({e["date"] for e in entries})
        devices = sorted({e["device"] for e in entries})
        busy = max((e["load"] / e["cpus"] for e in entries if e.get("load") and e.get("cpus")), default=0.0)
        shared = (
            f" The machine was shared with other work (load average up to {busy:.1f}× its cores): these "
            "times are upper bounds."
            if busy > 1.0
            else ""
        )
        notes.append(
            f"- {mode} mode: measured {dates[0]}{' to ' + dates[-1] if len(dates) > 1 else ''} by the "
            f"notebook runner on a machine with {', '.join(map(str, cpus))} CPU cores, "
            f"{' or '.join(map(str, jobs))} notebook(s) at a time, device {', '.join(devices)}.{shared}"
        )
    if estimated:
        notes.append(
            "- ≈ … (est.): the notebook's full mode has not been timed yet; the figure is the benchmark's time "
            "for the same `cpu` preset on the MVTec AD bottle (fit and predict, one thread; the book's "
            "benchmark page), without the notebook's figures and exercises."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_timings_page(record: dict, path: Path = TIMINGS_PAGE) -> Path:
    """The table the course page includes (``book/course.md``: ``{include} _generated/timings.md``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!-- written by book/build.py from build/course-timings.json and book/measured-timings.json: do not edit -->"
        "\n\n" + timings_table(merged_timings(record), estimates=benchmark_estimates()),
        encoding="utf-8",
    )
    return path


def build_html(quiet: bool = True) -> subprocess.CompletedProcess:
    """Run ``jupyter-book build`` on the book folder with this Python; raise with its log on failure."""
    command = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(BOOK),
        "--builder",
        "html",
        "--keep-going",
    ]
    if quiet:
        command.append("--quiet")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    log = result.stdout + result.stderr
    if result.returncode != 0 or not (HTML / "index.html").is_file():
        raise BookBuildError(f"jupyter-book build failed (exit {result.returncode}):\n{log[-6000:]}")
    return result


def problems_in_log(log: str) -> list[str]:
    """Sphinx ERROR/CRITICAL lines of a build log (warnings are tolerated, errors are not)."""
    return [line for line in log.splitlines() if "ERROR" in line or "CRITICAL" in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the book's HTML from the executed notebooks.")
    parser.add_argument("--execute", action="store_true", help="run the notebooks first (smoke unless --full)")
    parser.add_argument("--full", action="store_true", help="with --execute: smoke=False (the full experiments)")
    parser.add_argument(
        "--device", default=None, help="with --execute: device parameter (default cpu; auto with --full)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="with --execute: notebooks run at the same time")
    parser.add_argument(
        "--record-measured",
        metavar="DIR",
        default=None,
        help="fold the notebook runner's timings.json in DIR into book/measured-timings.json (committed) and stop",
    )
    args = parser.parse_args(argv)
    if args.record_measured:
        record = record_timings(Path(args.record_measured), MEASURED_TIMINGS)
        print(f"{MEASURED_TIMINGS}: {', '.join(f'{m}: {len(e)} notebooks' for m, e in record.items())}")
        return 0
    failed: list[str] = []
    names = None  # without --execute: every notebook of notebooks/ needs an executed copy
    if args.execute:
        sys.path.insert(0, str(REPO))
        from adlearn.tools.run_notebooks import run_all

        device = args.device or ("auto" if args.full else "cpu")
        results = run_all(
            sorted(SOURCE_NOTEBOOKS.glob("*.ipynb")),
            out_dir=EXECUTED,
            smoke=not args.full,
            device=device,
            jobs=args.jobs,
            cell_timeout=None if args.full else 600,
        )
        names = [row["notebook"] for row in results]
        failed = [row["notebook"] for row in results if row["status"] != "ok"]
        if failed:
            print(f"warning: these notebooks failed and show their error in the book: {', '.join(failed)}")
    start = time.perf_counter()
    try:
        copied = copy_executed(names=names)
        result = build_html()
    except BookBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    errors = problems_in_log(result.stdout + result.stderr)
    print(f"built {len(copied)} notebook pages in {time.perf_counter() - start:.1f} s -> {HTML / 'index.html'}")
    for line in errors:
        print(line)
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
