"""`adlearn sweep`: papermill runs over a parameter grid on a real Dask LocalCluster (loopback, 2 workers).

One slow test drives the whole story on the smoke-mode synthetic data, with two fast model notebooks
(10_padim, 13_dfm) × 2 categories × 2 seeds plus a small notebook that fails for one seed:

1. the sweep is started in its own process and interrupted (its process group killed) as soon as
   the first runs have finished;
2. the rerun skips the finished runs (their result files are untouched) and completes the rest;
3. the failing notebook is recorded with its error and did not stop the others;
4. every model run's recorded result (what its ``report(...)`` wrote) equals a sequential run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def failing_notebook(path: Path) -> Path:
    """A tiny notebook with the sweep's parameters that fails for seed 1 and reports otherwise."""
    cells = [
        nbformat.v4.new_code_cell("smoke = True\ndevice = 'cpu'\ncategory = None\nseed = 0"),
        nbformat.v4.new_code_cell("if seed == 1:\n    raise RuntimeError(f'planted failure for seed {seed}')"),
        nbformat.v4.new_code_cell(
            "from adlearn.notebook import report\n"
            "report({'model': 'toy', 'image_auroc': 0.5 + seed}, category=category, seed=seed)"
        ),
    ]
    cells[0].metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_sweep_on_a_local_cluster_resumes_records_failures_and_matches_sequential_runs(tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES
    from adlearn.sweep import RESULT_FILE, run_sweep

    notebooks = [
        str(REPO / "notebooks" / "10_padim.ipynb"),
        str(REPO / "notebooks" / "13_dfm.ipynb"),
        str(failing_notebook(tmp_path / "toy.ipynb")),
    ]
    categories = list(SYNTHETIC_CATEGORIES[:2])
    out = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "adlearn",
        "sweep",
        *notebooks,
        "-p",
        "category",
        ",".join(categories),
        "-p",
        "seed",
        "0,1",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    # 1. Start, and interrupt once the first runs have finished (or fail the test after 10 min).
    first = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 600
    while len(list(out.glob(f"*/*/{RESULT_FILE}"))) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished_before = {p: p.stat().st_mtime_ns for p in out.glob(f"*/*/{RESULT_FILE}")}
    assert 2 <= len(finished_before) < 12, "the sweep should have been interrupted part-way"

    # 2. Resume: the finished runs are skipped, the rest run; the failing notebook does not stop it.
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert second.returncode == 1, second.stdout + second.stderr  # 1: some run failed (planted)
    assert f"{len(finished_before)} already finished" in second.stdout
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished_before.items())
    results = {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.glob(f"*/*/{RESULT_FILE}")}
    assert len(results) == 12
    failed = {name for name, row in results.items() if row["status"] != "ok"}
    assert failed == {f"toy/category={c}_seed=1" for c in categories}
    assert all("planted failure for seed 1" in results[name]["error"] for name in failed)
    for name, row in results.items():
        if row["status"] == "ok":
            report = row["report"]
            assert report["category"] == row["parameters"]["category"]
            assert (out / name / Path(row["notebook"]).name).is_file()  # the executed notebook is kept
            if not name.startswith("toy/"):
                assert report["model"] in ("padim", "dfm") and 0.0 <= report["image_auroc"] <= 1.0
    table = (out / "results.md").read_text()
    assert table.count("| ok |") == 10 and "planted failure" in table

    # 3. The cluster's recorded results equal sequential runs' (one combination per model notebook).
    sequential = run_sweep(
        notebooks[:2], {"category": categories[:1], "seed": [1]}, tmp_path / "sequential", sequential=True, echo=False
    )
    for row in sequential:
        assert row["status"] == "ok"
        clustered = results[row["name"]]["report"]
        metrics = {k: v for k, v in row["report"].items() if not k.endswith(("seconds", "per_second", "memory_mb"))}
        assert metrics == {k: clustered[k] for k in metrics}
