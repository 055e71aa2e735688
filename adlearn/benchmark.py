"""`adlearn benchmark`: every (model, category, seed) cell on the same data, accuracy *and* cost.

    adlearn benchmark --models all --seeds 0,1,2 --out build/benchmark/synthetic
    adlearn benchmark --models padim,patchcore --root $ADLEARN_MVTEC_ROOT --categories bottle \\
        --out build/benchmark/bottle --book-page book/chapters/benchmarks.md --label "real bottle"

Each cell runs in a fresh Python process (``python -m adlearn.benchmark --cell SPEC``), so its peak
memory is its own, a crash or a hang cannot take the others down, and ``--time-limit`` can stop it.
A cell records image/pixel AUROC, AUPRO, F1-max, fit seconds (wall and process CPU), predict images/s, peak memory, the
number of parameters and the saved model's size, the machine it ran on, plus the load around it (`adlearn.machine`).
A table built from cells of several runs (an interrupted grid resumed elsewhere) lists every machine they came from.

Output (``--out``): ``cells/<model>__<category>__seed<k>.json`` (one per finished cell: a rerun
skips them, so an interrupted benchmark picks up where it stopped; failed cells are kept with their
error and retried only with ``--retry-failed``), ``logs/`` (each cell's output), ``results.csv``
(one row per cell), ``results.md`` (mean ± std over seeds per model and category, the machine, the
load), ``auroc_vs_fit_time.png`` and ``auroc_per_model.png``, ``machine.json``. ``--book-page``
writes (or updates, one section per ``--label``) the book's generated "Benchmarks" page.

Every cell builds its model as ``adlearn.create(name, preset=..., **options)`` does (`adlearn.options`):
``--preset`` defaults to ``cpu`` (offline backbones, a laptop's budget; printed at the start; ``--preset paper``
or ``none`` for the papers' settings), and ``--set`` is checked for every model before the first cell.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CELLS, LOGS = "cells", "logs"
# Per-cell columns of results.csv, in order (load columns come from adlearn.machine.LoadGuard).
COLUMNS = (
    "model",
    "category",
    "seed",
    "status",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1max",
    "pixel_f1max",
    "fit_seconds",
    "fit_cpu_seconds",
    "images_per_second",
    "peak_memory_mb",
    "parameters",
    "model_size_mb",
    "n_train",
    "n_test",
    "cell_seconds",
    "machine",
    "load_before",
    "load_after",
    "other_cpus",
    "busy",
    "options",
    "error",
)
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1max", "pixel_f1max")
COSTS = ("fit_seconds", "fit_cpu_seconds", "images_per_second", "peak_memory_mb", "parameters", "model_size_mb")


# ------------------------------------------------------------------------------------------- one cell
def cell_key(model: str, category: str, seed: int) -> str:
    return f"{model}__{category}__seed{seed}"


def accepted_options(model: str) -> set[str]:
    """The option names ``adlearn.create(model, ...)`` takes (`adlearn.options.accepted_options`)."""
    from adlearn.options import accepted_options as accepted

    return set(accepted(model))


def shared_options(spec: dict) -> dict:
    """The run's options for every model: ``--image-size`` and ``--backbone`` when given, then ``--set``."""
    given = {key: spec[key] for key in ("image_size", "backbone") if spec.get(key) is not None}
    return {**given, **(spec.get("set") or {})}


def model_options(model: str, spec: dict) -> dict:
    """The explicit options ``adlearn.create(model, preset=spec["preset"], ...)`` gets in this cell; `adlearn.options`
    lays them over the preset and the model's defaults, as for ``adlearn.create`` and ``adlearn evaluate``.

    Device and seed, then the run's options (`shared_options`) under the rule of
    `adlearn.options.options_for_models`: a plain ``KEY`` goes to the models that have it, ``MODEL.KEY`` to
    ``MODEL`` only (the whole run is checked before its first cell, and the models without a key are listed)."""
    from adlearn.options import options_for_models

    options = {"device": spec["device"], "seed": spec["seed"]}
    options.update(options_for_models([model], shared_options(spec), check=False)[model])
    return options


def run_cell(spec: dict) -> dict:
    """Fit and evaluate one (model, category, seed) cell; in the cell's own process."""
    import torch

    import adlearn
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset, synthetic_root
    from adlearn.evaluate import fit_and_evaluate
    from adlearn.machine import cell_machine

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    options = model_options(spec["model"], spec)
    if spec.get("preset"):
        options["preset"] = spec["preset"]
    model = adlearn.create(spec["model"], **options)
    root = spec.get("root") or synthetic_root(image_size=256, seed=0)  # the same data for every seed
    category = spec["category"] if spec.get("root") or spec["category"] in SYNTHETIC_CATEGORIES else None
    if category is None:
        raise ValueError(f"{spec['category']!r} is not a synthetic category ({', '.join(SYNTHETIC_CATEGORIES)})")
    train = MVTecDataset(root, category, split="train", transform=model.transform)
    test = MVTecDataset(root, category, split="test", transform=model.transform)
    if spec.get("max_train") and len(train) > spec["max_train"]:
        step = len(train) / spec["max_train"]
        train = torch.utils.data.Subset(train, [int(i * step) for i in range(spec["max_train"])])
    results = fit_and_evaluate(model, train, test)
    with tempfile.TemporaryDirectory() as tmp:
        size = model.save(Path(tmp) / "model.pt").stat().st_size
    row = {
        key: results.get(key)
        for key in (
            *METRICS,
            "fit_seconds",
            "fit_cpu_seconds",
            "images_per_second",
            "peak_memory_mb",
            "n_train",
            "n_test",
        )
    }
    row.update(
        parameters=sum(p.numel() for p in model.parameters()),
        model_size_mb=size / 2**20,
        options={k: v for k, v in options.items() if k not in ("device", "seed")},
        device=str(model.device),
        machine=cell_machine(model.device),
    )
    return row


def _cell_main(spec_path: str, result_path: str) -> int:
    """``python -m adlearn.benchmark --cell SPEC RESULT``: run a cell, write its row (or its error)."""
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    try:
        row, status = run_cell(spec), 0
        row["status"] = "ok"
    except Exception as error:  # recorded, not raised: the parent goes on with the other cells
        traceback.print_exc()
        row, status = {"status": "failed", "error": f"{type(error).__name__}: {error}"}, 1
    Path(result_path).write_text(json.dumps(row, default=str))
    return status


# ------------------------------------------------------------------------------------------- all cells
def check_preset_support(preset: str | None) -> None:
    """``--preset`` needs an ``adlearn.create(name, preset=...)``; say so clearly when it is missing."""
    if not preset:
        return
    from adlearn.models import create

    if "preset" not in inspect.signature(create).parameters:
        raise ValueError(
            f"--preset {preset}: this adlearn's create() does not take preset= yet. Run without "
            f"--preset (options can be set with --set KEY=VALUE), or update adlearn"
        )


def resolve_models(text: str) -> list[str]:
    from adlearn.models import available_models

    names = available_models() if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in available_models()]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {unknown or text!r}; available: {', '.join(available_models())} or 'all'")
    return names


def resolve_categories(text: str | None, root: str | None) -> list[str]:
    from adlearn.data import SYNTHETIC_CATEGORIES

    if root is None:
        found = list(SYNTHETIC_CATEGORIES)
    else:
        found = sorted(p.name for p in Path(root).iterdir() if (p / "train").is_dir()) if Path(root).is_dir() else []
        if not found:
            raise FileNotFoundError(f"no category folders (with train/) under --root {root}")
    if not text or text == "all":
        return found
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    missing = [c for c in chosen if c not in found]
    if missing:
        raise ValueError(f"category {missing[0]!r} not found; available: {', '.join(found)}")
    return chosen


def _check_set_keys(models: list[str], options: dict) -> dict[str, list[str]]:
    """Check the run's options before any cell starts (`adlearn.options.options_for_models`): a key none of
    ``models`` has, or a ``MODEL.KEY`` that ``MODEL`` lacks, is an `adlearn.options.OptionError` naming the
    closest option. Returns ``{key: the models without it}`` (they run without it; `cmd_benchmark` says so)."""
    from adlearn.options import not_applied, options_for_models

    options_for_models(models, options)
    return not_applied(models, options)


def run_benchmark(
    models: list[str],
    categories: list[str],
    seeds: list[int],
    out: Path,
    *,
    root: str | None = None,
    preset: str | None = None,
    device: str = "auto",
    image_size: int | None = None,
    backbone: str | None = None,
    options: dict | None = None,
    threads: int | None = None,
    max_train: int | None = None,
    time_limit: float | None = None,
    retry_failed: bool = False,
    allow_busy: bool = False,
    busy_threshold: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every cell not finished yet (each in its own process); return every cell's row."""
    from adlearn.machine import LoadGuard

    check_preset_support(preset)
    options = options or {}
    _check_set_keys(models, options)
    out = Path(out)
    (out / CELLS).mkdir(parents=True, exist_ok=True)
    (out / LOGS).mkdir(exist_ok=True)
    if root is None:  # generate the embedded data once, before the cells read it
        from adlearn.data import synthetic_root

        synthetic_root(image_size=256, seed=0)
    cells = [(m, c, s) for m in models for c in categories for s in seeds]
    specs = {
        cell: json.loads(
            json.dumps(
                {
                    "model": cell[0],
                    "category": cell[1],
                    "seed": cell[2],
                    "root": str(root) if root else None,
                    "preset": preset,
                    "preset_options": preset_options(cell[0], preset),
                    "device": device,
                    "image_size": image_size,
                    "backbone": backbone,
                    "set": options,
                    "threads": threads,
                    "max_train": max_train,
                },
                default=str,
            )
        )
        for cell in cells
    }
    todo = [cell for cell in cells if not _finished(out, cell, specs[cell], retry_failed)]
    guard = LoadGuard(allow_busy=allow_busy, threshold=busy_threshold)
    bar = _progress(len(cells), len(cells) - len(todo), progress)
    for cell in todo:
        key = cell_key(*cell)
        bar.set_description(key)
        row = _run_in_subprocess(specs[cell], out, key, time_limit, guard)
        row.update(model=cell[0], category=cell[1], seed=cell[2], spec=specs[cell])
        _write_json(out / CELLS / f"{key}.json", row)
        bar.update(1)
        if row["status"] != "ok":
            bar.write(f"{key}: {row['status']}: {row.get('error', '').splitlines()[0] if row.get('error') else ''}")
    bar.close()
    rows = [
        json.loads((out / CELLS / f"{cell_key(*cell)}.json").read_text())
        for cell in cells
        if (out / CELLS / f"{cell_key(*cell)}.json").is_file()
    ]
    info = guard.summary()
    if threads:  # what the cells ran with, not this parent process
        info["machine"]["torch_threads"] = threads
    info.update(preset=preset, device=device, image_size=image_size, root=str(root) if root else "embedded synthetic")
    _write_json(out / "machine.json", info)
    write_reports(rows, out, info)
    return rows


def preset_options(model: str, preset: str | None) -> dict | None:
    """What ``preset`` sets for ``model`` (recorded in each cell: a preset edited later makes its cells stale)."""
    if preset is None:
        return None
    from adlearn.options import preset_options as chosen  # an unknown preset: an error naming the model's presets

    return chosen(model, preset)


def _finished(out: Path, cell: tuple, spec: dict, retry_failed: bool) -> bool:
    """Has this cell a result from the same configuration? (One from other settings is an error, not a skip;
    one from an earlier version of the same preset is stale: it runs again.)"""
    path = out / CELLS / f"{cell_key(*cell)}.json"
    if not path.is_file():
        return False
    try:
        row = json.loads(path.read_text())
    except ValueError:
        return False  # a torn file: run the cell again
    if row.get("spec") not in (None, spec):
        changed = sorted(k for k in spec if row["spec"].get(k) != spec[k])
        if changed == ["preset_options"]:
            print(
                f"{path.name}: the {spec['preset']!r} preset of {spec['model']} changed since this cell ran "
                f"(now {spec['preset_options']}): running it again",
                file=sys.stderr,
            )
            return False
        raise ValueError(
            f"{path} was computed with other settings ({', '.join(changed)} differ): use another "
            f"--out for this configuration, or delete {out / CELLS} to start over"
        )
    return row.get("status") == "ok" or not retry_failed


def _run_in_subprocess(spec: dict, out: Path, key: str, time_limit: float | None, guard) -> dict:
    from adlearn.machine import cell_machine

    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        if spec.get("threads"):
            env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        command = [sys.executable, "-m", "adlearn.benchmark", "--cell", str(spec_path), str(result_path)]
        with open(out / LOGS / f"{key}.log", "w") as log, guard.measure(key) as load:
            start = time.perf_counter()
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=time_limit)
                row = (
                    json.loads(result_path.read_text())
                    if result_path.is_file()
                    else {"status": "failed", "error": f"the cell process died without a result (see {LOGS}/{key}.log)"}
                )
            except subprocess.TimeoutExpired:
                row = {"status": "timeout", "error": f"stopped after the per-cell time limit of {time_limit:g} s"}
            row["cell_seconds"] = round(time.perf_counter() - start, 2)
    if row["status"] == "failed":
        tail = (out / LOGS / f"{key}.log").read_text().strip().splitlines()[-6:]
        row["error"] = row.get("error") or "\n".join(tail)
    row.setdefault("machine", cell_machine(spec.get("device")))  # a failed or stopped cell too: same machine
    row.update(
        load_before=load.get("load_before"),
        load_after=load.get("load_after"),
        other_cpus=load.get("other_cpus"),
        busy=load.get("busy"),
    )
    return row


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)  # atomic: an interruption never leaves a half-written cell that looks finished


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="cell", disable=not enabled, file=sys.stderr)


# ------------------------------------------------------------------------------------------- reports
def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (model, category): mean and std over the seeds that finished."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["category"]), []).append(row)
    summary = []
    for (model, category), group in sorted(groups.items()):
        ok = [r for r in group if r.get("status") == "ok"]
        entry = {"model": model, "category": category, "seeds": len(ok), "failed": len(group) - len(ok)}
        for key in (*METRICS, *COSTS):
            values = [v for v in (_number(r.get(key)) for r in ok) if v is not None]
            mean = sum(values) / len(values) if values else None
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
            entry[key], entry[f"{key}_std"] = mean, std
        summary.append(entry)
    return summary


def markdown_table(rows: list[dict], info: dict | None = None) -> str:
    from adlearn.machine import describe

    def cell(entry, key, fmt, spread=True):
        mean, std = entry.get(key), entry.get(f"{key}_std")
        if mean is None:
            return "—"
        return format(mean, fmt) + (f" ± {format(std, fmt)}" if spread and std and entry["seeds"] > 1 else "")

    header = [
        "model",
        "category",
        "seeds",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "image F1-max",
        "fit s",
        "fit CPU s",
        "predict img/s",
        "peak MB",
        "parameters",
        "saved MB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for entry in summarize(rows):
        lines.append(
            "| "
            + " | ".join(
                [
                    entry["model"],
                    entry["category"],
                    f"{entry['seeds']}" + (f" ({entry['failed']} failed)" if entry["failed"] else ""),
                    cell(entry, "image_auroc", ".3f"),
                    cell(entry, "pixel_auroc", ".3f"),
                    cell(entry, "pixel_aupro", ".3f"),
                    cell(entry, "image_f1max", ".3f"),
                    cell(entry, "fit_seconds", ".1f"),
                    cell(entry, "fit_cpu_seconds", ".1f"),
                    cell(entry, "images_per_second", ".1f"),
                    cell(entry, "peak_memory_mb", ".0f", False),
                    cell(entry, "parameters", ",.0f", False),
                    cell(entry, "model_size_mb", ".1f", False),
                ]
            )
            + " |"
        )
    text = "\n".join(lines) + "\n"
    if info:
        busy = [r for r in rows if r.get("busy")]
        loads = [r["load_before"][0] for r in rows if r.get("load_before")]
        text += (
            f"\nCells ran on: {cell_machines(rows)}. Table written on: {describe(info['machine'])}. "
            f"Preset: {info.get('preset') or 'none'}; device {info.get('device')}; data: {info.get('root')}.\n"
            f"Load average before the cells: {min(loads):.2f}–{max(loads):.2f}. "
            if loads
            else "\n"
        )
        text += (
            f"**{len(busy)} of {len(rows)} cells ran while other processes used the CPU** (more than "
            f"{info.get('busy_threshold')} cores): their times are inflated.\n"
            if busy
            else "No cell ran while other processes used the CPU.\n"
        )
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        text += "\nFailed cells:\n\n" + "".join(
            f"- `{cell_key(r['model'], r['category'], r['seed'])}` ({r['status']}): "
            f"{(r.get('error') or '').strip().splitlines()[-1] if r.get('error') else ''}\n"
            for r in failed
        )
    return text


def cell_machines(rows: list[dict]) -> str:
    """``Intel Xeon, 2 CPUs (10 cells); AMD EPYC, 2 CPUs (2 cells)``: the machines the cells ran on, most cells
    first; cells written before cells recorded their machine count as "not recorded"."""
    counts = Counter(row.get("machine") or "not recorded" for row in rows)
    ordered = sorted(counts.items(), key=lambda item: (item[0] == "not recorded", -item[1], item[0]))
    return "; ".join(f"{name} ({n} cell{'s' if n > 1 else ''})" for name, n in ordered)


def fit_time_axis(rows: list[dict]) -> tuple[str, str]:
    """(column, axis label) of the fit cost to plot: wall seconds on an idle machine; process CPU seconds when
    any cell ran while other processes used the CPU (wall time then says how busy it was, not the cost)."""
    if any(r.get("busy") for r in rows) and all(_number(r.get("fit_cpu_seconds")) is not None for r in rows):
        return "fit_cpu_seconds", "fit CPU time (s, log scale; cells ran on a shared machine)"
    return "fit_seconds", "fit time (s, log scale)"


def model_styles(models: list[str]) -> tuple[dict, dict]:
    """(colour, marker) per model, no two models alike: ten colours, then the same colours with a new shape."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return (
        {m: palette(i % 10) for i, m in enumerate(models)},
        {m: "o^sDv"[(i // 10) % 5] for i, m in enumerate(models)},
    )


def write_figures(rows: list[dict], out: Path) -> list[Path]:
    """AUROC against fit time (log scale), and per-model bars with the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and _number(r.get("image_auroc")) is not None]
    models = sorted({r["model"] for r in ok})
    colours, markers = model_styles(models)
    paths = [out / "auroc_vs_fit_time.png", out / "auroc_per_model.png"]

    x_key, x_label = fit_time_axis(ok)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for model in models:
        mine = [r for r in ok if r["model"] == model]
        ax.scatter(
            [max(float(r[x_key]), 1e-3) for r in mine],
            [float(r["image_auroc"]) for r in mine],
            label=model,
            color=colours[model],
            marker=markers[model],
            alpha=0.8,
        )
    ax.set_xscale("log")
    ax.set(xlabel=x_label, ylabel="image AUROC", title="Accuracy against fit time (one dot per cell)")
    if models:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never hides a dot
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    summary = [e for e in summarize(ok) if e["image_auroc"] is not None]
    categories = sorted({e["category"] for e in summary})
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(models) * max(1, len(categories)) ** 0.5), 4.2))
    width = 0.8 / max(1, len(categories))
    shade = {c: 0.35 + 0.65 * (j + 1) / len(categories) for j, c in enumerate(categories)}  # lighter = earlier
    for j, category in enumerate(categories):
        for i, model in enumerate(models):
            entry = next((e for e in summary if e["model"] == model and e["category"] == category), None)
            if entry:
                ax.bar(
                    i + j * width,
                    entry["image_auroc"],
                    width,
                    yerr=entry["image_auroc_std"] or 0,
                    color=colours[model],
                    alpha=shade[category],
                    capsize=3,
                    edgecolor="black",
                    linewidth=0.4,
                )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=30, ha="right")
    ax.set(
        ylabel="image AUROC (mean ± std over seeds)",
        ylim=(0, 1.05),
        title="Image AUROC per model"
        + (
            " (bars: " + ", ".join(categories) + ", left to right)"
            if len(categories) > 1
            else f" ({categories[0]})"
            if categories
            else ""
        ),
    )
    ax.title.set_fontsize(9 if len(categories) > 3 else 11)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def write_reports(rows: list[dict], out: Path, info: dict | None = None) -> None:
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown_table(rows, info))
    write_figures(rows, out)


# ------------------------------------------------------------------------------------------- book page
PAGE_HEADER = """# Benchmarks

Every model on the same data, accuracy *and* cost: one row per model and category, mean ± std over
the seeds. Generated by `adlearn benchmark` (the command is given under each table); do not edit by
hand. How the numbers are measured, and the side-by-side speed comparisons with anomalib: the
repository's `docs/benchmarks.md`.
"""


NO_SECTION_YET = "No section has been generated yet: the first idle-machine run adds them here.\n"


def write_book_page(out: Path, page: Path, label: str, command: str, rows: list[dict] | None = None) -> Path:
    """Write or update ``page``: the section ``label`` gets this run's table, figures and machine.

    ``rows``: the cells of the run that ``command`` reproduces (what `run_benchmark` returns, the rows its
    figures were drawn from); default every cell in ``out`` — a folder shared with other runs would then
    put their cells in the table too."""
    page, out = Path(page), Path(out)
    if rows is None:
        rows = [json.loads(p.read_text()) for p in sorted((out / CELLS).glob("*.json"))]
    info = json.loads((out / "machine.json").read_text()) if (out / "machine.json").is_file() else None
    slug = "".join(ch if ch.isalnum() else "_" for ch in label.lower()).strip("_")
    figures = page.parent / "benchmark_figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("auroc_vs_fit_time.png", "auroc_per_model.png"):
        if (out / name).is_file():
            shutil.copyfile(out / name, figures / f"{slug}_{name}")
    begin, end = f"<!-- benchmark:{slug} -->", f"<!-- /benchmark:{slug} -->"
    section = (
        f"{begin}\n## {label}\n\n```bash\n{command}\n```\n\n{markdown_table(rows, info)}\n"
        f"![Image AUROC against fit time](benchmark_figures/{slug}_auroc_vs_fit_time.png)\n\n"
        f"![Image AUROC per model](benchmark_figures/{slug}_auroc_per_model.png)\n{end}\n"
    )
    text = page.read_text() if page.is_file() else PAGE_HEADER
    text = text.replace(NO_SECTION_YET, "")
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    page.write_text(text)
    return page


# ------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    """Register ``adlearn benchmark`` on the CLI's subparsers."""
    from adlearn.machine import add_arguments

    parser = sub.add_parser("benchmark", help="every model x category x seed: accuracy and cost, table + figures")
    parser.add_argument("--models", default="all", help="'all' or a comma-separated list")
    parser.add_argument("--root", help="MVTec-layout root (default: the embedded synthetic data)")
    parser.add_argument("--categories", default="all", help="'all' or a comma-separated list")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds (default 0,1,2)")
    parser.add_argument(
        "--preset",
        default="cpu",
        help="the models' named recipe, passed to adlearn.create(name, preset=...): cpu (offline backbones, a "
        "laptop's budget; the default), paper, or none (each model's defaults)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--image-size", type=int, help="image side for every model (default: the preset's, else the model's)"
    )
    parser.add_argument(
        "--backbone", help="backbone for every model that has one (default: the preset's, else the model's)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option, e.g. --set max_epochs=2 (repeatable): a plain KEY goes to every selected model that "
        "has it (the others are listed at the start; a KEY none has is an error), MODEL.KEY=VALUE to one model, "
        "e.g. --set padim.n_features=50",
    )
    parser.add_argument("--max-train", type=int, help="use at most this many training images (evenly spaced)")
    parser.add_argument("--threads", type=int, help="torch threads per cell (default: torch's default)")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds per cell; 0 = none (default 3600)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed or timed-out cells again")
    parser.add_argument("--out", default="build/benchmark", help="output folder (default build/benchmark)")
    parser.add_argument(
        "--book-page", help="also write this section into the book page, e.g. book/chapters/benchmarks.md"
    )
    parser.add_argument("--label", help="the book page section's title (default: the data's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(parser)
    parser.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    from adlearn.options import describe_preset, parse_set

    models = resolve_models(args.models)
    preset = None if args.preset == "none" else args.preset
    options = parse_set(args.set)
    skipped = _check_set_keys(models, shared_options({**vars(args), "set": options}))  # before any output
    print(describe_preset(models, preset), file=sys.stderr)
    for key, lacking in skipped.items():
        print(f"{key}: not an option of {', '.join(lacking)}, which run without it", file=sys.stderr)
    categories = resolve_categories(args.categories, args.root)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    out = Path(args.out)
    rows = run_benchmark(
        models,
        categories,
        seeds,
        out,
        root=args.root,
        preset=preset,
        device=args.device,
        image_size=args.image_size,
        backbone=args.backbone,
        options=options,
        threads=args.threads,
        max_train=args.max_train,
        time_limit=args.time_limit or None,
        retry_failed=args.retry_failed,
        allow_busy=args.allow_busy,
        busy_threshold=args.busy_threshold,
        progress=not args.no_progress,
    )
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, auroc_vs_fit_time.png, auroc_per_model.png")
    if args.book_page:
        label = args.label or ("embedded synthetic data" if args.root is None else Path(args.root).name)
        print(f"wrote {write_book_page(out, Path(args.book_page), label, command_line(args), rows)}")
    failed = [r for r in rows if r.get("status") != "ok"]
    return 1 if failed else 0


def command_line(args) -> str:
    """The ``adlearn benchmark`` command that reproduces this run (for the book page)."""
    parts = ["adlearn benchmark", f"--models {args.models}"]
    if args.root:
        parts.append(
            "--root $ADLEARN_MVTEC_ROOT"
            if os.environ.get("ADLEARN_MVTEC_ROOT")
            and Path(args.root).resolve() == Path(os.environ["ADLEARN_MVTEC_ROOT"]).resolve()
            else f"--root {args.root}"
        )
    parts += [f"--categories {args.categories}", f"--seeds {args.seeds}"]
    for flag in ("preset", "device", "backbone", "max_train", "threads"):
        if getattr(args, flag) not in (None, parser_defaults().get(flag)):
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    if args.image_size is not None:
        parts.append(f"--image-size {args.image_size}")
    parts += [f"--set {pair}" for pair in args.set] + [f"--out {args.out}"]
    return " ".join(parts)


def parser_defaults() -> dict:
    return {"device": "auto"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adlearn.benchmark")
    parser.add_argument(
        "--cell",
        nargs=2,
        metavar=("SPEC", "RESULT"),
        required=True,
        help="run one cell (what `adlearn benchmark` starts for each cell)",
    )
    args = parser.parse_args(argv)
    return _cell_main(*args.cell)


if __name__ == "__main__":
    sys.exit(main())
