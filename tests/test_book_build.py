"""book/build.py and the book's Sphinx extension on small inputs (fast: no notebook runs, no browser)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load("adlearn_book_build_fast", REPO / "book" / "build.py")
extension = _load("adlearn_book_extension", REPO / "book" / "_ext" / "adlearn_book.py")


def _run(directory: Path, smoke: bool, rows: list[tuple[str, str, float]], device: str = "cpu") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "timings.json").write_text(
        json.dumps(
            {
                "parameters": {"smoke": smoke, "device": device},
                "jobs": 2,
                "notebooks": [
                    {"notebook": name, "status": status, "seconds": seconds} for name, status, seconds in rows
                ],
            }
        )
    )
    return directory


def test_timings_are_recorded_per_mode_and_merged(tmp_path):
    record = tmp_path / "record.json"
    run = tmp_path / "run"
    build.record_timings(_run(run, True, [("00_a.ipynb", "ok", 30.0), ("01_b.ipynb", "failed", 5.0)]), record)
    build.record_timings(_run(run, True, [("01_b.ipynb", "ok", 40.0)]), record)  # a run of one notebook
    data = build.record_timings(_run(run, False, [("00_a.ipynb", "ok", 900.0)], device="cuda"), record)
    assert {name: entry["seconds"] for name, entry in data["smoke"].items()} == {"00_a.ipynb": 30.0, "01_b.ipynb": 40.0}
    assert data["full"]["00_a.ipynb"]["seconds"] == 900.0 and data["full"]["00_a.ipynb"]["device"] == "cuda"
    assert json.loads(record.read_text()) == data
    # No run at all: the record stands as it is.
    assert build.record_timings(tmp_path / "nothing", record) == data


def _notebook(path: Path, title: str) -> Path:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {title} — subtitle")])
    nbformat.write(notebook, path)
    return path


def test_timings_table_says_what_was_not_measured(tmp_path):
    notebooks = [_notebook(tmp_path / "00_a.ipynb", "Alpha"), _notebook(tmp_path / "01_b.ipynb", "Beta")]
    record = {
        "smoke": {
            "00_a.ipynb": {"seconds": 30.4, "device": "cpu", "cpus": 2, "jobs": 2, "date": "2026-01-02"},
            "01_b.ipynb": {"seconds": 150.0, "device": "cpu", "cpus": 2, "jobs": 2, "date": "2026-01-03"},
        },
        "full": {"00_a.ipynb": {"seconds": 3600.0, "device": "cuda", "cpus": 16, "jobs": 1, "date": "2026-01-04"}},
    }
    table = build.timings_table(record, notebooks)
    rows = table.splitlines()
    assert rows[2] == "| 00 {doc}`Alpha </notebooks/00_a>` | 30 s | 60 min (cuda) |"
    assert rows[3] == "| 01 {doc}`Beta </notebooks/01_b>` | 2 min | not measured yet |"
    assert rows[4] == "| **all notebooks, one after the other** | 3 min | — |"  # full mode incomplete
    assert "smoke mode: measured 2026-01-02 to 2026-01-03" in table and "2 CPU cores" in table
    empty = build.timings_table({}, notebooks)
    assert empty.count("not measured yet") == 4 + 2  # every cell, and a note per mode


def test_committed_measurements_fill_what_this_machine_did_not_run_and_estimates_are_marked(tmp_path):
    notebooks = [_notebook(tmp_path / "10_padim.ipynb", "PaDiM"), _notebook(tmp_path / "11_rare.ipynb", "Rare")]
    run = _run(tmp_path / "run", False, [("10_padim.ipynb", "ok", 420.0)])
    timings = json.loads((run / "timings.json").read_text())
    (run / "timings.json").write_text(json.dumps({**timings, "load_average": [3.0, 5.0], "cpus": 2}))
    measured = tmp_path / "measured.json"
    committed = build.record_timings(run, measured)
    assert committed["full"]["10_padim.ipynb"]["load"] == 5.0  # the larger of the loads before and after
    local = {"smoke": {"10_padim.ipynb": {"seconds": 30.0, "device": "cpu", "cpus": 2, "jobs": 2, "date": "d"}}}
    merged = build.merged_timings(local, measured)
    assert merged["full"]["10_padim.ipynb"]["seconds"] == 420.0 and merged["smoke"] == local["smoke"]
    assert build.merged_timings(local, tmp_path / "absent.json") == local
    cells = tmp_path / "cells"
    cells.mkdir()
    for model, seconds, status in (("rare", 1800.0, "ok"), ("padim", 60.0, "ok"), ("broken", 5.0, "failed")):
        cell = {"model": model, "status": status, "cell_seconds": seconds}
        (cells / f"{model}__bottle__seed0.json").write_text(json.dumps(cell))
    estimates = build.benchmark_estimates(cells)
    assert estimates == {"rare": 1800.0, "padim": 60.0}
    table = build.timings_table(merged, notebooks, estimates)
    rows = table.splitlines()
    assert rows[2] == "| 10 {doc}`PaDiM </notebooks/10_padim>` | 30 s | 7 min |"  # measured beats the estimate
    assert rows[3] == "| 11 {doc}`Rare </notebooks/11_rare>` | not measured yet | ≈ 30 min (est.) |"
    assert "upper bounds" in table and "2.5× its cores" in table and "(est.): the notebook's full mode" in table


def test_injected_parameters_cell_is_hidden_and_widgets_replaced():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("smoke = True", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("# Parameters\nsmoke = True\n", metadata={"tags": ["injected-parameters"]}),
            nbformat.v4.new_code_cell(
                "view",
                outputs=[
                    nbformat.v4.new_output(
                        "display_data", data={build.WIDGET_MIME: {"model_id": "x"}, "text/plain": "VBox()"}
                    )
                ],
            ),
        ]
    )
    notebook.metadata["widgets"] = {"state": {}}
    result = build.without_live_widgets(notebook)
    assert result.cells[0].metadata["tags"] == ["parameters"]
    assert result.cells[1].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert result.cells[2].outputs[0]["data"] == {"text/plain": build.WIDGET_NOTE}
    assert "widgets" not in result.metadata
    build.without_live_widgets(result)  # idempotent: the tag is not added twice
    assert result.cells[1].metadata["tags"].count("remove-cell") == 1


def test_repeated_scripts_are_dropped_once_per_page():
    sphinx_assets = pytest.importorskip("sphinx.builders.html._assets")
    script = sphinx_assets._JavaScript
    thebe = 'const THEBE_JS_URL = "x"'
    scripts = [
        script("_static/a.js"),
        script(None, body=thebe),
        script("_static/a.js"),
        script(None, body=thebe),
        script(None, body="other"),
        script("_static/a.js", **{"async": "async"}),
    ]
    context = {"script_files": scripts}
    extension.drop_repeated_scripts(SimpleNamespace(), "page", "page.html", context, None)
    kept = [(s.filename, s.attributes.get("body"), s.attributes.get("async")) for s in context["script_files"]]
    assert kept == [
        ("_static/a.js", None, None),
        (None, thebe, None),
        (None, "other", None),
        ("_static/a.js", None, "async"),
    ]
    assert context["script_files"] is scripts  # the page's own list, edited in place


def test_solutions_are_collapsed_and_the_heading_stays():
    cells = [
        nbformat.v4.new_markdown_cell("### Solutions", metadata={"tags": ["solution"]}),
        nbformat.v4.new_markdown_cell("**Solution 1.** Use ``` fences ``` sparingly.", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("print(1)", metadata={"tags": ["solution", "hide-input"]}),
        nbformat.v4.new_markdown_cell("## Not a solution"),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    notebook = build.collapse_solutions(nbformat.v4.new_notebook(cells=cells))
    heading, explanation, code, other_markdown, other_code = notebook.cells
    assert heading.source == "### Solutions"
    assert explanation.source.startswith("````{dropdown} Solution 1.\n**Solution 1.**")
    assert explanation.source.endswith("\n````")  # longer than the ``` inside it
    assert code.metadata["tags"] == ["solution", "hide-cell"]
    assert other_markdown.source == "## Not a solution" and "tags" not in other_code.metadata
