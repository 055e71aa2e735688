"""`adlearn sweep`: run notebooks over a grid of parameters with papermill, locally or on a Dask cluster.

    adlearn sweep notebooks/11_patchcore.ipynb -p category bottle,weave -p seed 0,1,2 --out build/sweep
    adlearn sweep notebooks/10_padim.ipynb notebooks/13_dfm.ipynb -p seed 0,1 --jobs 2
    adlearn sweep notebooks/11_patchcore.ipynb -p seed 0,1,2 --scheduler tcp://10.0.0.5:8786

One papermill run per (notebook, combination of the ``-p`` values): the values override the notebook's
``parameters`` cell (with ``smoke`` and ``device``). What a run *is* lives here (`run_notebook`); running the
grid is `adlearn.runner`'s, the same as for `adlearn benchmark`. Each run gets a folder
``<out>/<notebook>/<name=value_...>/`` holding the executed notebook and ``result.json``: status,
wall time, error, the machine, the load around the run, and the notebook's recorded result — what its last
cell passes to `adlearn.notebook.report`, which writes it as JSON to the file named by ``ADLEARN_REPORT_FILE``
(set by the sweep for each run). ``results.csv`` and ``results.md`` collect every run (`adlearn.reports`);
``logs/`` keeps each run's output.

* A failing notebook is recorded (its error and traceback tail) and the other runs go on.
* A rerun skips the runs that have a ``result.json`` (failed ones too, unless ``--retry-failed``):
  an interrupted sweep resumes where it stopped. A result of other ``--smoke/--full`` or ``--device``
  values is an error: use another ``--out``.
* Runs execute on ``dask.distributed``: by default a ``LocalCluster`` of ``--jobs`` worker processes
  with one thread each, on loopback; with ``--scheduler tcp://host:port`` the workers of an existing
  cluster (same code). Each run is a separate Python process whose notebook kernel gets
  ``--threads`` torch/OpenMP threads (default 1), so ``--jobs`` runs never oversubscribe the cores.
  Runs that shared the CPU (with each other or anything else) have their wall times marked in the tables.

On several machines (each with adlearn installed, the same data paths, and ``--out`` on a shared
file system so the executed notebooks land in one place)::

    dask scheduler --port 8786                                  # on one machine
    dask worker tcp://SCHEDULER:8786 --nworkers 4 --nthreads 1  # on each machine (4 runs at a time)
    adlearn sweep notebooks/11_patchcore.ipynb -p seed 0,1,2,3 --scheduler tcp://SCHEDULER:8786 --out /shared/sweep
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

RESULT_FILE = "result.json"
REPORT_FILE = "report.json"
REPORT_ENV = "ADLEARN_REPORT_FILE"
CELL_FUNCTION = "adlearn.sweep:run_notebook"  # what the runner calls in each run's process


# ------------------------------------------------------------------------------------------ the grid
def combinations(notebooks: list[str | Path], parameters: dict[str, list]) -> list[dict]:
    """Every (notebook, parameter combination), in a stable order."""
    names = list(parameters)
    runs = []
    for notebook in notebooks:
        notebook = Path(notebook)
        if not notebook.is_file():
            raise FileNotFoundError(f"no notebook at {notebook}")
        for values in itertools.product(*(parameters[name] for name in names)):
            combination = dict(zip(names, values))
            runs.append(
                {
                    "notebook": str(notebook.resolve()),
                    "parameters": combination,
                    "name": f"{notebook.stem}/{run_slug(combination)}",
                }
            )
    return runs


def run_slug(parameters: dict) -> str:
    """``{"category": "bottle", "seed": 0}`` -> ``category=bottle_seed=0`` (a safe folder name)."""
    if not parameters:
        return "default"
    text = "_".join(
        f"{name}={json.dumps(value) if not isinstance(value, str) else value}" for name, value in parameters.items()
    )
    return re.sub(r"[^A-Za-z0-9_=.,+-]", "-", text)


def parse_values(text: str) -> list:
    """``-p seed 0,1,2`` -> ``[0, 1, 2]``: each comma-separated value as JSON when it parses, else text."""
    values = []
    for item in text.split(","):
        try:
            values.append(json.loads(item))
        except json.JSONDecodeError:
            values.append(item)
    return values


# ------------------------------------------------------------------------------------------ one run
def run_notebook(spec: dict) -> dict:
    """Execute one notebook with papermill (in the run's own process, started by `adlearn.runner`).

    The notebook's kernel inherits this process's environment: the report file it names (what the
    notebook's ``report(...)`` writes) and the thread variables the runner set for this run.
    """
    from adlearn.tools.run_notebooks import install_kernelspec, run_one

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path = run_dir / REPORT_FILE
    report_path.unlink(missing_ok=True)
    os.environ[REPORT_ENV] = str(report_path)
    kernel = install_kernelspec(Path(spec["kernel_dir"]))
    # threads=None: the thread variables are already set in this process's environment.
    row = run_one(spec["notebook"], str(run_dir), spec["parameters"], kernel, spec["cell_timeout"], None)
    report = json.loads(report_path.read_text()) if report_path.is_file() else row["report"]
    return {"status": row["status"], "error": row["error"], "report": report}


# ------------------------------------------------------------------------------------------ the sweep
def load_result(out: Path, run: dict) -> dict | None:
    """A run's stored result (None when it has none yet)."""
    from adlearn.runner import read_result

    try:
        return read_result(Path(out) / run["name"] / RESULT_FILE)
    except (OSError, ValueError):
        return None


def run_sweep(
    notebooks: list[str | Path],
    parameters: dict[str, list],
    out: str | Path,
    *,
    jobs: int = 2,
    scheduler: str | None = None,
    sequential: bool = False,
    smoke: bool = True,
    device: str = "cpu",
    threads: int = 1,
    cell_timeout: float | None = 600,
    retry_failed: bool = False,
    echo: bool = True,
) -> list[dict]:
    """Run every combination not finished yet (`adlearn.runner`); write results.csv / results.md; return every
    run's row.

    ``sequential=True`` runs them from this process, one after the other (no Dask): the reference the
    cluster's results are checked against. A finished run whose notebook ran with other ``smoke`` /
    ``device`` values is an error (use another ``out``), never a result mixed into this sweep's table.
    """
    from adlearn.reports import sweep_tables
    from adlearn.runner import Cell, run_grid
    from adlearn.tools.run_notebooks import _prepare_data

    out = Path(out).resolve()
    cells = [
        Cell(
            key=run["name"],
            spec={"notebook": run["notebook"], "parameters": {"smoke": smoke, "device": device, **run["parameters"]}},
            path=f"{run['name']}/{RESULT_FILE}",
            fields={"notebook": Path(run["notebook"]).name, "name": run["name"], "parameters": run["parameters"]},
            task={"run_dir": str(out / run["name"]), "kernel_dir": str(out), "cell_timeout": cell_timeout},
        )
        for run in combinations(notebooks, parameters)
    ]
    rows = run_grid(
        cells,
        CELL_FUNCTION,
        out,
        jobs=jobs,
        scheduler=scheduler,
        sequential=sequential,
        threads=threads,
        retry_failed=retry_failed,
        prepare=lambda: _prepare_data(smoke),  # the embedded data, generated once before the runs race for it
        progress=echo,
    )
    sweep_tables(rows, out)
    return rows


# ------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    """Register ``adlearn sweep`` on the CLI's subparsers."""
    parser = sub.add_parser("sweep", help="papermill runs over a parameter grid, on a local or remote Dask cluster")
    parser.add_argument("notebooks", nargs="+", help="the notebooks to run")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUES"),
        help="a parameter and its comma-separated values (repeatable), e.g. -p seed 0,1,2",
    )
    parser.add_argument("--out", default="build/sweep", help="output folder (default build/sweep)")
    parser.add_argument("--jobs", type=int, default=2, help="LocalCluster workers = runs at a time (default 2)")
    parser.add_argument(
        "--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786 (instead of a LocalCluster)"
    )
    parser.add_argument("--sequential", action="store_true", help="no Dask: run one after the other in this process")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per notebook kernel (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="smoke", action="store_true", default=True, help="smoke=True (default)")
    mode.add_argument("--full", dest="smoke", action="store_false", help="smoke=False: the full experiment")
    parser.add_argument("--device", default="cpu", help="the notebooks' device parameter (default cpu)")
    parser.add_argument("--cell-timeout", type=float, default=600.0, help="seconds per cell; 0 = none")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    parameters: dict[str, list] = {}
    for name, values in args.parameter:
        if name in parameters:
            raise ValueError(f"-p {name} given twice; give all its values at once: -p {name} a,b,c")
        parameters[name] = parse_values(values)
    rows = run_sweep(
        args.notebooks,
        parameters,
        args.out,
        jobs=args.jobs,
        scheduler=args.scheduler,
        sequential=args.sequential,
        smoke=args.smoke,
        device=args.device,
        threads=args.threads,
        cell_timeout=args.cell_timeout or None,
        retry_failed=args.retry_failed,
    )
    print(Path(args.out, "results.md").read_text())
    print(f"wrote {args.out}/results.csv and results.md")
    failed = [row["name"] for row in rows if row["status"] != "ok"]
    return 1 if failed else 0
