"""`adlearn sweep`: the grid of notebook runs and what a run records.

Running the grid (resume, failures, a Dask cluster through ``--scheduler``) is `adlearn.runner`'s:
tests/test_runner.py. Here: names and values of the grid, the report a notebook writes, and a model notebook
run by the default LocalCluster (2 workers) recording the same result as a run without Dask.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("distributed")
pytest.importorskip("papermill")


def test_grid_names_and_values(tmp_path):
    from adlearn.sweep import combinations, parse_values, run_slug

    assert parse_values("0,1,bottle,0.5,true") == [0, 1, "bottle", 0.5, True]
    assert run_slug({"category": "weave", "seed": 1}) == "category=weave_seed=1"
    notebook = tmp_path / "a.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    runs = combinations([notebook], {"category": ["x", "y"], "seed": [0, 1]})
    assert [r["name"] for r in runs] == [
        "a/category=x_seed=0",
        "a/category=x_seed=1",
        "a/category=y_seed=0",
        "a/category=y_seed=1",
    ]
    with pytest.raises(FileNotFoundError, match="no notebook"):
        combinations([tmp_path / "missing.ipynb"], {})


def test_report_writes_the_recorded_result_when_asked(tmp_path, monkeypatch, capsys):
    from adlearn.notebook import report

    target = tmp_path / "run" / "report.json"
    monkeypatch.setenv("ADLEARN_REPORT_FILE", str(target))
    report({"model": "dfm", "image_auroc": 0.75, "fit_seconds": 1.23456}, category="weave", seed=1)
    printed = json.loads(capsys.readouterr().out)
    assert (
        json.loads(target.read_text())
        == printed
        == {"model": "dfm", "category": "weave", "seed": 1, "image_auroc": 0.75, "fit_seconds": 1.2346}
    )


def test_the_tables_mark_wall_times_measured_while_the_cpu_was_shared(tmp_path):
    import csv

    from adlearn.reports import sweep_tables

    report = {"model": "dfm", "image_auroc": 0.75, "fit_seconds": 1.5, "images_per_second": 20.0}
    rows = [
        {"notebook": "a.ipynb", "name": "a/seed=0", "parameters": {"seed": 0}, "status": "ok", "cell_seconds": 9.0}
        | {"busy": False, "report": report},
        {"notebook": "a.ipynb", "name": "a/seed=1", "parameters": {"seed": 1}, "status": "ok", "cell_seconds": 30.0}
        | {"busy": True, "report": report},
        # a run written before the runner: "seconds", no load recorded
        {"notebook": "a.ipynb", "name": "a/seed=2", "parameters": {"seed": 2}, "status": "failed", "seconds": 2.0}
        | {"error": "RuntimeError: planted\nmore", "report": None},
    ]
    sweep_tables(rows, tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0] == (
        "| notebook | seed | status | seconds | model | image_auroc | pixel_auroc | pixel_aupro | image_f1max "
        "| fit_seconds | images_per_second | peak_memory_mb |"
    )
    assert lines[2] == "| a.ipynb | 0 | ok | 9.0 | dfm | 0.75 | — | — | — | 1.5 | 20 | — |"
    assert lines[3] == "| a.ipynb | 1 | ok | 30.0 † | dfm | 0.75 | — | — | — | 1.5 † | 20 † | — |"
    assert lines[4] == "| a.ipynb | 2 | failed | 2.0 | — | — | — | — | — | — | — | — |"
    text = "\n".join(lines)
    assert "† wall time measured while other processes shared the CPU (1 of 3 cells)" in text
    assert "- `a/seed=2`: RuntimeError: planted" in text
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["busy"] for row in table] == ["False", "True", ""] and table[2]["error"] == "RuntimeError: planted"


@pytest.mark.slow
def test_a_model_notebook_on_the_default_local_cluster_records_what_a_sequential_run_records(tmp_path):
    from adlearn.cli import main
    from adlearn.data import SYNTHETIC_CATEGORIES
    from adlearn.sweep import run_sweep

    notebook, category = str(REPO / "notebooks" / "10_padim.ipynb"), SYNTHETIC_CATEGORIES[0]
    out = tmp_path / "sweep"
    assert (
        main(["sweep", notebook, "-p", "category", category, "-p", "seed", "1", "--jobs", "2", "--out", str(out)]) == 0
    )
    clustered = json.loads((out / "10_padim" / f"category={category}_seed=1" / "result.json").read_text())
    assert (
        clustered["status"] == "ok" and (out / "10_padim" / f"category={category}_seed=1" / "10_padim.ipynb").is_file()
    )
    assert "| ok |" in (out / "results.md").read_text()

    [row] = run_sweep(
        [notebook], {"category": [category], "seed": [1]}, tmp_path / "sequential", sequential=True, echo=False
    )
    assert row["status"] == "ok" and row["report"]["model"] == "padim" and 0.0 <= row["report"]["image_auroc"] <= 1.0
    metrics = {k: v for k, v in row["report"].items() if not k.endswith(("seconds", "per_second", "memory_mb"))}
    assert metrics == {k: clustered["report"][k] for k in metrics}
