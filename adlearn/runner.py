"""The one grid runner behind `adlearn benchmark` and `adlearn sweep`: cells on dask.distributed, one JSON each.

A *cell* is a key and a JSON-able spec (`Cell`); the command says what running it means, as a function
``spec -> row`` named ``"module:function"`` (``adlearn.benchmark:run_cell`` fits and evaluates a model,
``adlearn.sweep:run_notebook`` executes a notebook). The runner does the rest, the same for both:

* **one JSON file per cell** (``Cell.path`` under ``out``), written atomically by the process that started the
  grid; it holds the row, the cell's ``spec``, ``format`` (`FORMAT`) and ``machine``
  (`adlearn.machine.cell_machine` of the machine that ran it). Files written before ``format`` existed are
  read as format 1 (`read_result`) and never rewritten;
* **resume**: a cell whose file holds a result of the same spec is skipped (a failed one too, unless
  ``retry_failed``); a result of another spec is an error naming what differs, never a stale result reused
  (except for the spec keys in ``rerun_when_changed``: those cells run again);
* **failures are recorded, not fatal**: an exception in the cell, a crashed process, a lost worker or the
  per-cell ``time_limit`` gives a row with its ``status`` and ``error``; the other cells go on;
* **each cell in its own process** (``python -m adlearn.runner FUNCTION SPEC RESULT``), started by a
  dask.distributed worker: its peak memory is its own, a crash or a hang cannot take the others down, the
  time limit can stop it, and ``threads`` fixes its OpenMP/MKL threads;
* **the load around each cell** (`adlearn.machine.LoadGuard`, measured on the worker): ``load_before``,
  ``load_after``, ``other_cpus`` and ``busy`` — a wall time measured while other processes shared the CPU
  (other cells included) is marked as such by `adlearn.reports` in every table;
* **where**: a ``LocalCluster`` of ``jobs`` single-threaded worker processes on loopback by default;
  ``scheduler="tcp://HOST:PORT"`` for an existing cluster (its workers need adlearn, the same data paths, and
  ``out`` on a shared file system for the logs and executed notebooks); ``sequential=True`` in this process,
  one cell after the other, without Dask.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 2  # version of a cell's JSON: 2 adds "format" and always has "machine"; files without "format" are 1
LOGS = "logs"  # each cell's output: <out>/logs/<key>.log
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Cell:
    """One cell of a grid.

    Args:
        key: its unique name (its log is ``logs/<key>.log``).
        spec: what its result depends on (JSON-able): given to the cell function, stored with the result and
            compared on resume.
        path: its result's JSON file, relative to ``out``.
        fields: copied into its result (``model``, ``category``, ``seed``; a notebook run's ``name``).
        task: given to the cell function beside ``spec`` but neither stored nor compared (where to write).
    """

    key: str
    spec: dict
    path: str
    fields: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """How a worker starts a cell's process (the same for every cell of a grid)."""

    function: str  # "module:function", called with the cell's spec in the cell's process
    out: str  # absolute
    threads: int | None = None
    time_limit: float | None = None
    busy_threshold: float | None = None


# ------------------------------------------------------------------------------------------- results
def read_result(path: Path) -> dict:
    """A cell's result as stored; one from before results had a ``format`` is format 1 (left as it is on disk)."""
    row = json.loads(Path(path).read_text())
    row.setdefault("format", 1)
    return row


def write_result(path: Path, row: dict) -> None:
    """Write ``row`` atomically: an interruption never leaves a half-written result that looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=str) + "\n")
    tmp.replace(path)


def finished(path: Path, spec: dict, *, retry_failed: bool = False, rerun_when_changed: Iterable[str] = ()) -> bool:
    """Has this cell a result of the same spec? (No file or a torn one: no. A result of another spec: an error
    naming what differs, unless only keys in ``rerun_when_changed`` differ: then the cell runs again.)"""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        row = read_result(path)
    except ValueError:
        return False  # a torn file: run the cell again
    stored = row.get("spec")
    if stored is not None and stored != spec:  # results from before specs were stored cannot be checked
        changed = sorted(key for key in {*spec, *stored} if stored.get(key) != spec.get(key))
        if set(changed) <= set(rerun_when_changed):
            now = ", ".join(f"{key}={spec.get(key)}" for key in changed)
            print(f"{path.name}: changed since this cell ran (now {now}): running it again", file=sys.stderr)
            return False
        raise ValueError(
            f"{path} was computed with other settings ({', '.join(changed)} differ): use another --out for "
            f"this configuration, or delete {path.parent} to start over"
        )
    return row.get("status") == "ok" or not retry_failed


# ------------------------------------------------------------------------------------------- one cell
def execute_cell(cell: Cell, launch: Launch) -> tuple[dict, dict]:
    """Run one cell in a child process and measure the load around it (on a worker); never raises.

    Returns (row, load record): the row the cell function returned (or the failure), plus ``cell_seconds``,
    ``machine`` and the load columns.
    """
    from adlearn.machine import BusyMachineWarning, LoadGuard, cell_machine

    log_path = Path(launch.out) / LOGS / f"{cell.key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if launch.threads:
        env.update({name: str(launch.threads) for name in THREAD_VARIABLES})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BusyMachineWarning)  # the grid's process reports the load
        guard = LoadGuard(threshold=launch.busy_threshold, echo=False)
        with tempfile.TemporaryDirectory() as tmp, open(log_path, "w") as log, guard.measure(cell.key) as load:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(json.dumps({**cell.task, **cell.spec}))
            command = [sys.executable, "-m", "adlearn.runner", launch.function, str(spec_path), str(result_path)]
            start = time.perf_counter()
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=launch.time_limit)
                row = (
                    json.loads(result_path.read_text())
                    if result_path.is_file()
                    else {
                        "status": "failed",
                        "error": f"the cell process died without a result (see {LOGS}/{cell.key}.log)",
                    }
                )
            except subprocess.TimeoutExpired:
                row = {
                    "status": "timeout",
                    "error": f"stopped after the per-cell time limit of {launch.time_limit:g} s",
                }
            row["cell_seconds"] = round(time.perf_counter() - start, 2)
    if row["status"] == "failed" and not row.get("error"):
        row["error"] = "\n".join(log_path.read_text().strip().splitlines()[-6:])
    row.setdefault("machine", cell_machine())  # a failed or stopped cell too: the machine it ran on
    row.update({key: load.get(key) for key in ("load_before", "load_after", "other_cpus", "busy")})
    return row, load


def cell_main(function: str, spec_path: str, result_path: str) -> int:
    """``python -m adlearn.runner FUNCTION SPEC RESULT``: one cell's process; its row (or its error) to RESULT."""
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    module, _, name = function.partition(":")
    try:
        row = dict(getattr(importlib.import_module(module), name)(spec))
        row.setdefault("status", "ok")
    except Exception as error:  # recorded, not raised: the grid goes on with the other cells
        traceback.print_exc()
        row = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    Path(result_path).write_text(json.dumps(row, default=str))
    return 0 if row["status"] == "ok" else 1


# ------------------------------------------------------------------------------------------- the grid
def run_grid(
    cells: list[Cell],
    function: str,
    out: str | Path,
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    sequential: bool = False,
    threads: int | None = None,
    time_limit: float | None = None,
    retry_failed: bool = False,
    rerun_when_changed: Iterable[str] = (),
    guard=None,
    prepare: Callable[[], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every cell not finished yet; return every cell's result (in the order of ``cells``).

    Args:
        cells: the grid; keys must be unique.
        function: ``"module:function"`` that runs one cell: ``spec -> row`` (a dict; ``status`` "ok" unless
            it says otherwise; an exception is recorded as a failed cell).
        out: the results' folder.
        jobs: workers of the default ``LocalCluster`` (each runs one cell at a time).
        scheduler: an existing Dask scheduler (``tcp://HOST:PORT``) instead of a ``LocalCluster``.
        sequential: no Dask: the cells one after the other, from this process.
        threads: OpenMP/MKL/OpenBLAS threads of each cell's process (default: unchanged).
        time_limit: seconds after which a cell's process is stopped (recorded as ``timeout``).
        retry_failed: run failed and timed-out cells again.
        rerun_when_changed: spec keys whose change makes a finished cell run again (instead of an error).
        guard: the `adlearn.machine.LoadGuard` that judges each cell's load (its threshold goes to the
            workers); each cell's load record is appended to its ``records``, in the order of ``cells``.
        prepare: called once before the first cell runs (e.g. generating shared data); not when all are done.
        progress: a progress bar and a line per failed cell.
    """
    from tqdm.auto import tqdm

    from adlearn.machine import LoadGuard

    cells = list(cells)
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"cells with the same key: {sorted({k for k in keys if keys.count(k) > 1})}")
    if scheduler and sequential:
        raise ValueError("--scheduler and --sequential exclude each other")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    guard = guard if guard is not None else LoadGuard()
    todo = [
        cell
        for cell in cells
        if not finished(out / cell.path, cell.spec, retry_failed=retry_failed, rerun_when_changed=rerun_when_changed)
    ]
    if progress:
        print(
            f"{len(cells)} cell(s), {len(cells) - len(todo)} already finished, {len(todo)} to go -> {out}", flush=True
        )
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not progress, file=sys.stderr)
    records = {}
    if todo:
        if prepare is not None:
            prepare()
        launch = Launch(function, str(out.resolve()), threads, time_limit, guard.threshold)
        for cell, row, record in _execute(todo, launch, jobs, scheduler, sequential):
            write_result(out / cell.path, {"format": FORMAT, **row, **cell.fields, "spec": cell.spec})
            if record is not None:
                records[cell.key] = guard.judge(record)
            bar.update(1)
            if row["status"] != "ok":
                error = (row.get("error") or "").strip().splitlines()
                bar.write(f"{cell.key}: {row['status']}: {error[-1] if error else ''}")
    bar.close()
    guard.records.extend(records[key] for key in keys if key in records)
    return [read_result(out / cell.path) for cell in cells if (out / cell.path).is_file()]


def _execute(todo: list[Cell], launch: Launch, jobs: int, scheduler: str | None, sequential: bool) -> Iterator:
    """Yield (cell, row, load record) as each cell finishes: from this process, or on a Dask cluster."""
    if sequential:
        for cell in todo:
            yield (cell, *execute_cell(cell, launch))
        return
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise RuntimeError(
            "the grid runs on dask.distributed: pip install 'distributed>=2024.1' (or pass --sequential)"
        ) from None
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:  # one thread per worker: a worker runs one cell at a time, `jobs` cells in parallel
        cluster = LocalCluster(
            n_workers=max(1, jobs),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # a free port: never "8787 is already in use"
            silence_logs=40,
        )
        client = Client(cluster)
    try:
        futures, cell_of = [], {}
        for cell in todo:
            future = client.submit(
                execute_cell, cell, launch, key=f"adlearn-{cell.key}-{time.time_ns()}", pure=False, retries=0
            )
            futures.append(future)
            cell_of[future.key] = cell
        for future in as_completed(futures):
            try:
                row, record = future.result()
            except Exception as error:  # the worker died (out of memory, killed): this cell only
                row, record = (
                    {"status": "failed", "error": f"its worker was lost: {type(error).__name__}: {error}"},
                    None,
                )
            yield cell_of[future.key], row, record
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m adlearn.runner MODULE:FUNCTION SPEC.json RESULT.json (one cell of a grid)")
    sys.exit(cell_main(*sys.argv[1:]))
