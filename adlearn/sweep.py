"""`adlearn sweep`: run notebooks over a grid of parameters with papermill, locally or on a Dask cluster.

    adlearn sweep notebooks/11_patchcore.ipynb -p category bottle,weave -p seed 0,1,2 --out build/sweep
    adlearn sweep notebooks/10_padim.ipynb notebooks/13_dfm.ipynb -p seed 0,1 --jobs 2
    adlearn sweep notebooks/11_patchcore.ipynb -p seed 0,1,2 --scheduler tcp://10.0.0.5:8786

One papermill run per (notebook, combination of the ``-p`` values): the values override the notebook's
``parameters`` cell (with ``smoke`` and ``device``). Each run gets a folder
``<out>/<notebook>/<name=value_...>/`` holding the executed notebook and ``result.json``: status,
wall time, error, and the notebook's recorded result — what its last cell passes to
`adlearn.notebook.report`, which writes it as JSON to the file named by ``ADLEARN_REPORT_FILE``
(set by the sweep for each run). ``results.csv`` and ``results.md`` collect every run.

* A failing notebook is recorded (its error and traceback tail) and the other runs go on.
* A rerun skips the runs that have a ``result.json`` (failed ones too, unless ``--retry-failed``):
  an interrupted sweep resumes where it stopped.
* Runs execute on ``dask.distributed``: by default a ``LocalCluster`` of ``--jobs`` worker processes
  with one thread each, on loopback; with ``--scheduler tcp://host:port`` the workers of an existing
  cluster (same code). Each run is a separate Python process whose notebook kernel gets
  ``--threads`` torch/OpenMP threads (default 1), so ``--jobs`` runs never oversubscribe the cores.

On several machines (each with adlearn installed, the same data paths, and ``--out`` on a shared
file system so the executed notebooks land in one place)::

    dask scheduler --port 8786                                  # on one machine
    dask worker tcp://SCHEDULER:8786 --nworkers 4 --nthreads 1  # on each machine (4 runs at a time)
    adlearn sweep notebooks/11_patchcore.ipynb -p seed 0,1,2,3 --scheduler tcp://SCHEDULER:8786 --out /shared/sweep
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULT_FILE = "result.json"
REPORT_FILE = "report.json"
REPORT_ENV = "ADLEARN_REPORT_FILE"


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
def execute_run(run: dict, out: str, settings: dict) -> dict:
    """Run one notebook (on a worker): papermill in a child process with its own environment.

    The child's environment names the report file and fixes the kernel's threads; a child process
    (rather than the worker itself) keeps that environment per run even when a worker runs several
    tasks at once. Never raises: the outcome is in the returned dict.
    """
    run_dir = Path(out) / run["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path = run_dir / REPORT_FILE
    report_path.unlink(missing_ok=True)
    threads = str(settings.get("threads") or 1)
    env = {
        **os.environ,
        REPORT_ENV: str(report_path),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    spec = {
        "notebook": run["notebook"],
        "run_dir": str(run_dir),
        "kernel_dir": str(Path(out)),
        "parameters": {
            "smoke": settings.get("smoke", True),
            "device": settings.get("device", "cpu"),
            **run["parameters"],
        },
        "cell_timeout": settings.get("cell_timeout"),
    }
    start = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "adlearn.sweep", "--run-one", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    try:
        outcome = json.loads(child.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        outcome = {
            "status": "failed",
            "report": None,
            "error": f"the run's process ended with code {child.returncode}: {child.stderr.strip()[-2000:]}",
        }
    if report_path.is_file():  # the recorded result: what the notebook's report(...) wrote
        outcome["report"] = json.loads(report_path.read_text())
    return {
        "notebook": Path(run["notebook"]).name,
        "name": run["name"],
        "parameters": run["parameters"],
        "status": outcome["status"],
        "seconds": round(time.perf_counter() - start, 2),
        "error": outcome.get("error", ""),
        "report": outcome.get("report"),
        "host": socket.gethostname(),
    }


def _run_one_main(spec_json: str) -> int:
    """``python -m adlearn.sweep --run-one SPEC``: papermill one notebook; print the outcome as JSON."""
    from adlearn.tools.run_notebooks import install_kernelspec, run_one

    spec = json.loads(spec_json)
    kernel = install_kernelspec(Path(spec["kernel_dir"]))
    # threads=None: the thread variables are already set in this process's environment.
    row = run_one(spec["notebook"], spec["run_dir"], spec["parameters"], kernel, spec["cell_timeout"], None)
    print(json.dumps({"status": row["status"], "error": row["error"], "report": row["report"]}, default=str))
    return 0


# ------------------------------------------------------------------------------------------ the sweep
def load_result(out: Path, run: dict) -> dict | None:
    try:
        return json.loads((Path(out) / run["name"] / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _save_result(out: Path, row: dict) -> None:
    path = Path(out) / row["name"] / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=str) + "\n")
    tmp.replace(path)  # atomic: an interrupted sweep never leaves a half-written result


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
    """Run every combination not finished yet; write results.csv / results.md; return every run's row.

    ``sequential=True`` runs in this process, one after the other (no Dask): the reference the
    cluster's results are checked against.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = combinations(notebooks, parameters)
    done = {run["name"]: load_result(out, run) for run in runs}
    todo = [
        run for run in runs if done[run["name"]] is None or (retry_failed and done[run["name"]].get("status") != "ok")
    ]
    settings = {"smoke": smoke, "device": device, "threads": threads, "cell_timeout": cell_timeout}
    if echo:
        print(f"{len(runs)} run(s), {len(runs) - len(todo)} already finished, {len(todo)} to go -> {out}", flush=True)
    if todo:
        from adlearn.tools.run_notebooks import _prepare_data

        _prepare_data(smoke)  # the embedded data, generated once before parallel runs race for it
        for row in _execute(todo, str(out), settings, jobs, scheduler, sequential):
            _save_result(out, row)
            done[row["name"]] = row
            if echo:
                print(
                    f"  {row['status']:>6}  {row['seconds']:7.1f} s  {row['name']}"
                    + (f"\n{row['error']}" if row["status"] != "ok" else ""),
                    flush=True,
                )
    rows = [done[run["name"]] for run in runs if done[run["name"]] is not None]
    write_tables(rows, out)
    return rows


def _execute(todo: list[dict], out: str, settings: dict, jobs: int, scheduler: str | None, sequential: bool):
    """Yield each run's row as it finishes: in this process, or on a Dask cluster."""
    if sequential:
        for run in todo:
            yield execute_run(run, out, settings)
        return
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise RuntimeError(
            "adlearn sweep runs on dask.distributed: pip install 'distributed>=2024.1' (or pass --sequential)"
        ) from None
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        # One thread per worker: a worker runs one notebook at a time; --jobs workers in parallel.
        cluster = LocalCluster(
            n_workers=max(1, jobs),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        )
        client = Client(cluster)
    try:
        futures = [
            client.submit(
                execute_run,
                run,
                out,
                settings,
                key=f"adlearn-sweep-{run['name']}-{time.time_ns()}",
                pure=False,
                retries=0,
            )
            for run in todo
        ]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------ tables
REPORT_COLUMNS = (
    "model",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1max",
    "fit_seconds",
    "images_per_second",
    "peak_memory_mb",
)


def write_tables(rows: list[dict], out: Path) -> None:
    names = sorted({name for row in rows for name in row["parameters"]})
    header = ["notebook", *names, "status", "seconds", *REPORT_COLUMNS, "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            report = row.get("report") or {}
            error = (row.get("error") or "").strip().splitlines()
            writer.writerow(
                [
                    row["notebook"],
                    *[row["parameters"].get(n) for n in names],
                    row["status"],
                    row["seconds"],
                    *[report.get(c) for c in REPORT_COLUMNS],
                    error[0] if error else "",
                ]
            )
    lines = ["| " + " | ".join(header[:-1]) + " |", "|" + "---|" * (len(header) - 1)]
    for row in rows:
        report = row.get("report") or {}
        cells = [
            row["notebook"],
            *[str(row["parameters"].get(n)) for n in names],
            row["status"],
            f"{row['seconds']:.1f}",
        ]
        cells += [_fmt(report.get(c)) for c in REPORT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [row for row in rows if row["status"] != "ok"]
    text = "\n".join(lines) + "\n"
    if failed:
        text += "\nFailed runs:\n\n" + "".join(
            f"- `{row['name']}`: {(row.get('error') or '').strip().splitlines()[0] if row.get('error') else ''}\n"
            for row in failed
        )
    (out / "results.md").write_text(text)


def _fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
    if args.scheduler and args.sequential:
        raise ValueError("--scheduler and --sequential exclude each other")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adlearn.sweep")
    parser.add_argument("--run-one", required=True, help="(internal) one papermill run, as a JSON spec")
    return _run_one_main(parser.parse_args(argv).run_one)


if __name__ == "__main__":
    sys.exit(main())
