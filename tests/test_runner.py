"""`adlearn.runner`: the one grid runner of `adlearn benchmark` and `adlearn sweep`.

Fast tests drive the runner with a toy cell function (no torch) from this process (``sequential``): one JSON
per cell with its format and machine, resume, failures and time limits recorded, a changed spec refused, the
committed cells of earlier formats read and left as they are. Slow tests run both commands on a real
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``: the benchmark through ``--scheduler``
gives the same table as a local run and resumes; the sweep runs, records a failure and resumes there too.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from adlearn import reports, runner
from adlearn.machine import LoadGuard, cell_machine
from adlearn.runner import Cell, read_result, run_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A cell function ``toycells:square`` importable by the cells' processes: x -> x**2, or a planted failure."""
    folder = tmp_path / "toy_module"
    folder.mkdir()
    (folder / "toycells.py").write_text(
        textwrap.dedent(
            """
            import os, time

            def square(spec):
                if spec.get("sleep"):
                    time.sleep(spec["sleep"])
                if spec.get("fail"):
                    raise RuntimeError(f"planted failure for x={spec['x']}")
                if spec.get("die"):
                    os._exit(3)  # the process ends without writing a result
                return {"value": spec["x"] ** 2, "where": spec.get("where")}
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{REPO}")
    return "toycells:square"


def toy_cells(specs: list[dict]) -> list[Cell]:
    return [
        Cell(f"x{spec['x']}", spec, f"cells/x{spec['x']}.json", fields={"x": spec["x"]}, task={"where": "tmp"})
        for spec in specs
    ]


def stamps(folder: Path, pattern: str = "*.json") -> dict[str, int]:
    """When each result file under ``folder`` was last written."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.glob(pattern)}


def test_cells_record_format_machine_and_failures_and_resume(toy, tmp_path):
    out = tmp_path / "grid"
    cells = toy_cells([{"x": 0}, {"x": 3}, {"x": 2, "fail": True}, {"x": 5, "die": True}])
    guard = LoadGuard(echo=False)
    rows = run_grid(cells, toy, out, sequential=True, guard=guard, progress=False)

    assert [row["x"] for row in rows] == [0, 3, 2, 5]  # every cell, in the grid's order
    ok, failed, died = rows[:2], rows[2], rows[3]
    assert [row["value"] for row in ok] == [0, 9] and all(row["status"] == "ok" for row in ok)
    assert ok[0]["where"] == "tmp" and "where" not in ok[0]["spec"]  # the task reaches the cell, not the spec
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: planted failure for x=2"
    assert "planted failure for x=2" in (out / "logs" / "x2.log").read_text()  # the traceback is kept
    assert died["status"] == "failed" and "died without a result" in died["error"]
    for row, cell in zip(rows, cells):
        on_disk = json.loads((out / cell.path).read_text())
        assert on_disk == row and row["format"] == runner.FORMAT == 2 and row["spec"] == cell.spec
        assert row["machine"] == cell_machine()  # failed cells too
        assert {"load_before", "load_after", "other_cpus", "busy"} <= set(row) and row["cell_seconds"] >= 0
    assert [record["label"] for record in guard.records] == ["x0", "x3", "x2", "x5"]

    # Resume: nothing finished runs again (a failed cell neither, without retry_failed) ...
    before = stamps(out / "cells")
    assert run_grid(cells, toy, out, sequential=True, progress=False) == rows
    assert stamps(out / "cells") == before
    # ... with it, only the failed cells run again.
    run_grid(cells, toy, out, sequential=True, retry_failed=True, progress=False)
    after = stamps(out / "cells")
    assert [name for name in after if after[name] != before[name]] == ["x2.json", "x5.json"]

    # A torn file (an interruption in the middle of a write) is no result: the cell runs again.
    (out / "cells" / "x0.json").write_text('{"status": "o')
    assert run_grid(cells[:1], toy, out, sequential=True, progress=False)[0]["value"] == 0

    # Another spec for a finished cell: an error naming what differs, unless the caller says to rerun then.
    changed = [Cell("x3", {"x": 3, "extra": 1}, "cells/x3.json")]
    with pytest.raises(ValueError, match=r"other settings \(extra differ\)"):
        run_grid(changed, toy, out, sequential=True, progress=False)
    rows = run_grid(changed, toy, out, sequential=True, rerun_when_changed=("extra",), progress=False)
    assert rows[0]["spec"] == {"x": 3, "extra": 1} and rows[0]["value"] == 9

    with pytest.raises(ValueError, match="same key"):
        run_grid(cells + cells[:1], toy, out, sequential=True, progress=False)


def test_a_cell_over_its_time_limit_is_stopped_and_recorded(toy, tmp_path):
    rows = run_grid(
        toy_cells([{"x": 1, "sleep": 60}, {"x": 2}]), toy, tmp_path, sequential=True, time_limit=1, progress=False
    )
    assert rows[0]["status"] == "timeout" and "time limit of 1 s" in rows[0]["error"]
    assert rows[0]["cell_seconds"] < 60 and rows[1]["value"] == 4  # stopped; the next cell still ran


def test_committed_cells_of_the_first_format_are_read_and_left_as_they_are(tmp_path):
    committed = sorted((REPO / "benchmarks" / "results").glob("*/cells/*.json"))
    assert committed, "the repository's benchmark cells"
    first_format = [path for path in committed if "format" not in json.loads(path.read_text())]
    rows = [read_result(path) for path in committed]
    assert all(row["format"] == 1 for row, path in zip(rows, committed) if path in first_format)
    table = reports.markdown_table(rows)
    assert all(f"| {row['model']} | {row['category']} |" in table for row in rows)

    # Resuming a grid whose cells are of the first format: skipped, read as format 1, the files untouched.
    path = first_format[0]
    stored = json.loads(path.read_text())
    copy = tmp_path / "cells" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    cell = Cell(path.stem, stored["spec"], f"cells/{path.name}")
    rows = run_grid([cell], "toycells:never_called", tmp_path, sequential=True, progress=False)
    assert rows[0]["format"] == 1 and rows[0]["image_auroc"] == stored["image_auroc"]
    assert copy.read_bytes() == path.read_bytes()


# ------------------------------------------------------------------------------------------- on a cluster
@pytest.fixture
def cluster():
    """A LocalCluster of two single-threaded worker processes on loopback, as a user's own cluster."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster


def ran_on(cluster) -> bool:
    """Did the cluster's scheduler run the runner's tasks?"""
    return "adlearn" in cluster.scheduler.task_prefixes


@pytest.mark.slow
def test_benchmark_through_a_scheduler_writes_the_table_of_a_local_run_and_resumes(
    cluster, small_synthetic_root, tmp_path, capsys
):
    from adlearn.cli import main
    from adlearn.data import SYNTHETIC_CATEGORIES

    command = ["benchmark", "--models", "padim,patchcore", "--root", str(small_synthetic_root)]
    command += ["--categories", SYNTHETIC_CATEGORIES[0], "--seeds", "0", "--image-size", "64", "--threads", "1"]
    command += ["--device", "cpu", "--allow-busy", "--no-progress"]
    on_cluster, local = tmp_path / "on_cluster", tmp_path / "local"
    assert main([*command, "--out", str(on_cluster), "--scheduler", cluster.scheduler_address]) == 0
    assert ran_on(cluster)
    assert main([*command, "--out", str(local)]) == 0  # the default: a LocalCluster of its own

    def table(out: Path) -> list[dict]:
        with open(out / "results.csv") as f:
            return [
                {k: row[k] for k in ("model", "category", "seed", "status", *reports.METRICS)}
                for row in csv.DictReader(f)
            ]

    def accuracy_rows(out: Path) -> list[str]:  # the markdown table's columns up to image F1-max
        lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
        return ["|".join(line.split("|")[:8]) for line in lines]

    assert table(on_cluster) == table(local) and [row["model"] for row in table(local)] == ["padim", "patchcore"]
    assert accuracy_rows(on_cluster) == accuracy_rows(local) and len(accuracy_rows(local)) == 3
    for path in (on_cluster / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        assert cell["format"] == runner.FORMAT and cell["machine"] == cell_machine("cpu")
        assert 0.5 <= cell["image_auroc"] <= 1.0

    # A rerun through the scheduler resumes: no cell is computed again, the same table is written.
    before, table_before = stamps(on_cluster / "cells"), table(on_cluster)
    capsys.readouterr()
    rerun = [arg for arg in command if arg != "--no-progress"]  # the line below is progress output
    assert main([*rerun, "--out", str(on_cluster), "--scheduler", cluster.scheduler_address]) == 0
    assert "2 cell(s), 2 already finished, 0 to go" in capsys.readouterr().out
    assert stamps(on_cluster / "cells") == before and table(on_cluster) == table_before


def toy_notebook(path: Path) -> Path:
    """A tiny notebook with the sweep's parameters that fails for seed 1 and reports otherwise."""
    cells = [
        nbformat.v4.new_code_cell("smoke = True\ndevice = 'cpu'\nseed = 0"),
        nbformat.v4.new_code_cell("if seed == 1:\n    raise RuntimeError(f'planted failure for seed {seed}')"),
        nbformat.v4.new_code_cell(
            "from adlearn.notebook import report\nreport({'model': 'toy', 'image_auroc': 0.5 + seed / 4}, seed=seed)"
        ),
    ]
    cells[0].metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_sweep_on_a_cluster_records_a_failure_and_resumes(cluster, tmp_path, capsys):
    pytest.importorskip("papermill")
    from adlearn.cli import main
    from adlearn.sweep import run_sweep

    notebook, out = toy_notebook(tmp_path / "toy.ipynb"), tmp_path / "sweep"
    command = [
        "sweep",
        str(notebook),
        "-p",
        "seed",
        "0,2,1",
        "--out",
        str(out),
        "--scheduler",
        cluster.scheduler_address,
    ]
    assert main(command) == 1  # 1: a run failed (planted)
    assert ran_on(cluster)
    results = {seed: json.loads((out / "toy" / f"seed={seed}" / "result.json").read_text()) for seed in (0, 1, 2)}
    assert [results[seed]["status"] for seed in (0, 1, 2)] == ["ok", "failed", "ok"]
    assert "planted failure for seed 1" in results[1]["error"]
    assert results[0]["report"] == {"model": "toy", "seed": 0, "image_auroc": 0.5}
    assert results[2]["report"]["image_auroc"] == 1.0
    assert (out / "toy" / "seed=2" / "toy.ipynb").is_file()  # the executed notebook is kept
    assert all(row["format"] == runner.FORMAT and row["machine"] == cell_machine() for row in results.values())
    table = (out / "results.md").read_text()
    assert table.count("| ok |") == 2 and "planted failure" in table

    before = stamps(out, "*/*/result.json")
    capsys.readouterr()
    assert main(command) == 1
    assert "3 cell(s), 3 already finished, 0 to go" in capsys.readouterr().out
    assert stamps(out, "*/*/result.json") == before and len(before) == 3
    # The same folder with another device: refused, never mixed into this sweep's table.
    with pytest.raises(ValueError, match=r"other settings \(parameters differ\)"):
        run_sweep([notebook], {"seed": [0]}, out, device="cuda", sequential=True, echo=False)
