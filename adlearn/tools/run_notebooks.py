"""Execute the course notebooks with papermill: in parallel, timed, with the metrics they report.

    python -m adlearn.tools.run_notebooks                          # every notebook, smoke, CPU -> build/notebooks/
    python -m adlearn.tools.run_notebooks --full --device cuda --out build/notebooks-gpu
    python -m adlearn.tools.run_notebooks notebooks/10_padim.ipynb -p category weave -p image_size 224

Each notebook's ``parameters`` cell is overridden with ``smoke``, ``device`` and any ``-p NAME VALUE``
(papermill's injection). The executed copies land in ``--out`` (the book is built from them, and
nbval re-runs them), next to ``timings.json`` (per-notebook wall time, status, error, and the metrics
the notebook printed with `adlearn.notebook.report`) and ``results.md`` (the same as a table).

The kernel is always this Python (``sys.executable``): a kernelspec named ``adlearn-venv`` is
written under ``<out>/.jupyter`` and put first on ``JUPYTER_PATH``, so a fresh virtual environment
needs no ``ipykernel install`` and a user's own ``python3`` kernel is never picked by mistake.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# The checkout: the working directory when it holds notebooks/, else the one this file sits in
# (an editable install, as `make install` does).
REPO = Path.cwd() if (Path.cwd() / "notebooks").is_dir() else Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
DEFAULT_OUT = REPO / "build" / "notebooks"
KERNEL_NAME = "adlearn-venv"
TIMINGS_FILE = "timings.json"
RESULTS_FILE = "results.md"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------------- kernel
def install_kernelspec(out_dir: Path) -> str:
    """Write a kernelspec that runs ``sys.executable`` and put it first on ``JUPYTER_PATH``."""
    data_dir = Path(out_dir).resolve() / ".jupyter"
    spec_dir = data_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        # --log-level=ERROR: no "running over TCP without encryption" warning per notebook (local kernels)
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--log-level=ERROR"],
        "display_name": f"Python 3 ({Path(sys.prefix).name})",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = [str(data_dir)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    return KERNEL_NAME


# ------------------------------------------------------------------------------------------- one run
def notebook_paths(targets: list[str | Path] | None = None) -> list[Path]:
    """The notebooks to run: the given files/folders, or every ``notebooks/*.ipynb``."""
    if not targets:
        return sorted(NOTEBOOKS.glob("*.ipynb"))
    paths: list[Path] = []
    for target in map(Path, targets):
        paths += sorted(target.glob("*.ipynb")) if target.is_dir() else [target]
    return paths


def find_report(notebook) -> dict | None:
    """The last one-line JSON object with a ``"model"`` key the notebook printed (`notebook.report`)."""
    found = None
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stdout":
                continue
            for line in output.get("text", "").splitlines():
                line = line.strip()
                if line.startswith("{") and line.endswith("}") and '"model"' in line:
                    try:
                        found = json.loads(line)
                    except json.JSONDecodeError:
                        pass
    return found


def _error_of(notebook) -> str:
    """The error a failed run left in its output notebook: ``Name: message`` plus the last traceback lines."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                trace = _ANSI.sub("", "\n".join(output.get("traceback", [])))
                tail = "\n".join(trace.strip().splitlines()[-12:])
                return f"{output.get('ename')}: {output.get('evalue')}\n{tail}"
    return ""


def _without_output_widget_mimic() -> None:
    """Make papermill's notebook client leave ipywidgets ``Output`` widgets alone.

    nbclient imitates a browser's ``Output`` widget: it answers the kernel with comm messages sent on
    the shell channel while the cell runs. For a cell that creates, fills and displays such a widget
    (every `adlearn.widgets` view) this sometimes leaves nbclient waiting for the whole cell timeout
    (seen: 600 s per widget cell under load; the cell then "completes" normally). Without the
    imitation nothing is sent to the kernel; what the widget displays lands in the cell's outputs,
    where the book shows it as a static picture. Idempotent; affects this process only.
    """
    import papermill.engines as engines

    base = engines.PapermillNotebookClient
    if getattr(base, "_adlearn_no_widget_mimic", False):
        return

    class Client(base):
        _adlearn_no_widget_mimic = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.widget_registry = {}  # nbclient's table of imitated widget models: none

    engines.PapermillNotebookClient = Client


def run_one(
    source: str,
    out_dir: str,
    parameters: dict,
    kernel_name: str,
    cell_timeout: float | None,
    threads: int | None = None,
) -> dict:
    """Execute one notebook (in a worker process); never raises: the outcome is in the returned dict."""
    import nbformat
    import papermill

    _without_output_widget_mimic()

    source_path, out_path = Path(source), Path(out_dir) / Path(source).name
    if threads:  # torch/NumPy threads of the kernel (it inherits this environment)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(threads)
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        papermill.execute_notebook(
            str(source_path),
            str(out_path),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(out_dir),
            progress_bar=False,
            log_output=False,
            execution_timeout=cell_timeout,
            start_timeout=120,
        )
    except Exception as exc:  # a failing cell, a timeout, a dead kernel
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    report = None
    if out_path.is_file():
        executed = nbformat.read(out_path, as_version=4)
        report = find_report(executed)
        if status != "ok":
            error = _error_of(executed) or error
    elif status == "ok":
        status, error = "failed", f"papermill wrote no output notebook at {out_path}"
    return {
        "notebook": source_path.name,
        "status": status,
        "seconds": round(seconds, 2),
        "error": _ANSI.sub("", error),
        "report": report,
    }


# -------------------------------------------------------------------------------------------- a sweep
def _order(paths: list[Path], previous: dict[str, float]) -> list[Path]:
    """Longest first (the last run's times; else higher numbers, i.e. models, first): less idle tail."""
    return sorted(paths, key=lambda p: (-previous.get(p.name, 0.0), -_number(p)))


def _number(path: Path) -> int:
    match = re.match(r"(\d+)_", path.name)
    return int(match.group(1)) if match else -1


def previous_timings(out_dir: Path) -> dict[str, float]:
    try:
        rows = json.loads((Path(out_dir) / TIMINGS_FILE).read_text())["notebooks"]
        return {row["notebook"]: float(row["seconds"]) for row in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_all(
    paths: list[Path] | None = None,
    out_dir: Path = DEFAULT_OUT,
    smoke: bool = True,
    device: str = "cpu",
    extra_parameters: dict | None = None,
    jobs: int = 2,
    cell_timeout: float | None = 600,
    echo: bool = True,
) -> list[dict]:
    """Execute ``paths`` (default: every notebook) into ``out_dir``; write timings.json and results.md."""
    paths = [Path(p) for p in (paths if paths is not None else notebook_paths())]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel_name = install_kernelspec(out_dir)
    parameters = {"smoke": smoke, "device": device, **(extra_parameters or {})}
    _prepare_data(smoke)
    jobs = max(1, min(jobs, len(paths)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    ordered = _order(paths, previous_timings(out_dir))
    load_before = _load_average()
    start = time.perf_counter()
    results: list[dict] = []
    if echo:
        print(f"running {len(paths)} notebook(s), {jobs} at a time, parameters {parameters} -> {out_dir}", flush=True)
    args = [(str(p), str(out_dir), parameters, kernel_name, cell_timeout, threads) for p in ordered]
    if jobs == 1:
        for arg in args:
            results.append(run_one(*arg))
            _echo(results[-1], echo)
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, *arg) for arg in args]
            for future in as_completed(futures):
                results.append(future.result())
                _echo(results[-1], echo)
    results.sort(key=lambda row: row["notebook"])
    total = time.perf_counter() - start
    summary = {
        "parameters": parameters,
        "jobs": jobs,
        "wall_seconds": round(total, 2),
        "load_average": [load_before, _load_average()],  # 1-minute load before and after: was the machine busy?
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "notebooks": results,
    }
    (out_dir / TIMINGS_FILE).write_text(json.dumps(summary, indent=1))
    (out_dir / RESULTS_FILE).write_text(results_table(results, total, parameters))
    if echo:
        print(timings_table(results, total), flush=True)
    return results


def _prepare_data(smoke: bool) -> None:
    """Generate the embedded synthetic data once, before notebooks run in parallel and race for it."""
    try:
        from adlearn.data import synthetic_root
        from adlearn.notebook import FULL_SIZES, SMOKE_SIZES
    except ImportError:  # the data layer is missing: the notebooks will say so themselves
        return
    synthetic_root(image_size=256, seed=0, **(SMOKE_SIZES if smoke else FULL_SIZES))


def _echo(row: dict, echo: bool) -> None:
    if echo:
        print(
            f"  {row['status']:>6}  {row['seconds']:7.1f} s  {row['notebook']}"
            + (f"\n{row['error']}" if row["status"] != "ok" else ""),
            flush=True,
        )


def timings_table(results: list[dict], total: float | None = None) -> str:
    """Plain-text table: notebook, status, wall seconds (for the terminal and the test log)."""
    width = max([len("notebook")] + [len(r["notebook"]) for r in results])
    lines = [f"{'notebook':<{width}}  status  wall s", f"{'-' * width}  ------  ------"]
    lines += [f"{r['notebook']:<{width}}  {r['status']:>6}  {r['seconds']:6.1f}" for r in results]
    lines.append(f"{'sum of notebooks':<{width}}          {sum(r['seconds'] for r in results):6.1f}")
    if total is not None:
        lines.append(f"{'wall (parallel)':<{width}}          {total:6.1f}")
    return "\n".join(lines)


_METRIC_COLUMNS = (
    ("image AUROC", "image_auroc", ".3f"),
    ("pixel AUROC", "pixel_auroc", ".3f"),
    ("AUPRO", "pixel_aupro", ".3f"),
    ("image F1", "image_f1max", ".3f"),
    ("fit s", "fit_seconds", ".1f"),
    ("img/s", "images_per_second", ".1f"),
    ("peak MB", "peak_memory_mb", ".0f"),
)


def _format(value, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "—" if value is None else str(value)


def results_table(results: list[dict], total: float, parameters: dict) -> str:
    """Markdown table: notebook, status, wall time, and the metrics each model notebook reported."""
    header = ["notebook", "status", "wall s", "model", "category", *[c[0] for c in _METRIC_COLUMNS]]
    lines = [
        f"Parameters: `{json.dumps(parameters)}` — total wall time {total:.0f} s",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in results:
        report = row.get("report") or {}
        cells = [
            row["notebook"],
            row["status"],
            f"{row['seconds']:.1f}",
            str(report.get("model", "—")),
            str(report.get("category", "—")),
            *[_format(report.get(key), fmt) for _, key, fmt in _METRIC_COLUMNS],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
def _value(text: str):
    """``-p`` values: JSON when it parses (numbers, true/false, null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adlearn.tools.run_notebooks",
        description="Execute notebooks with papermill, in parallel, timed.",
    )
    parser.add_argument("notebooks", nargs="*", help="notebooks or folders (default: notebooks/*.ipynb)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="smoke", action="store_true", default=True, help="smoke=True (default)")
    mode.add_argument("--full", dest="smoke", action="store_false", help="smoke=False: the full experiment")
    parser.add_argument("--device", default="cpu", help="device parameter (cpu, cuda, auto); default cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at the same time (default 2)")
    parser.add_argument("--cell-timeout", type=float, default=600.0, help="seconds per cell; 0 = none")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="extra papermill parameter (repeatable), e.g. -p category weave",
    )
    args = parser.parse_args(argv)
    extra = {name: _value(value) for name, value in args.parameter}
    results = run_all(
        notebook_paths(args.notebooks),
        args.out,
        smoke=args.smoke,
        device=args.device,
        extra_parameters=extra,
        jobs=args.jobs,
        cell_timeout=args.cell_timeout or None,
    )
    print(f"wrote {args.out / TIMINGS_FILE} and {args.out / RESULTS_FILE}")
    failed = [row["notebook"] for row in results if row["status"] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
