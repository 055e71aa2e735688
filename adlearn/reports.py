"""What a grid of results becomes: summary tables, CSV, figures and the book's "Benchmarks" page.

`adlearn.runner` runs the cells and keeps one JSON per cell; this module only reads rows (one dict per cell):

* `adlearn benchmark`: `summarize` (mean ± std over seeds per model and category), `write_csv` (one row per
  cell, `COLUMNS`), `markdown_table`, `write_figures` (AUROC against fit time, AUROC per model),
  `write_reports` (all three into ``--out``) and `write_book_page` (one section per ``--label``);
* `adlearn sweep`: `sweep_tables` (one row per notebook run, with what its ``report(...)`` recorded).

Every table marks a wall time measured while other processes shared the CPU (a cell's ``busy``, recorded by
`adlearn.machine.LoadGuard` around the cell) with ``†`` and says below the table what the mark means: such a
time is inflated, and the process CPU time is the one to compare.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from pathlib import Path

# Per-cell columns of a benchmark's results.csv, in order (the load columns come from adlearn.machine.LoadGuard).
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
# video models (their image_auroc is the frame AUROC, all frames pooled): the video section of the table
VIDEO_METRICS = (
    "frame_auroc_micro",
    "frame_auroc_macro",
    "region_auroc",
    "frame_auroc_velocity",
    "frame_auroc_pose",
    "frame_auroc_appearance",
)
COSTS = ("fit_seconds", "fit_cpu_seconds", "images_per_second", "peak_memory_mb", "parameters", "model_size_mb")
BUSY_MARK = "†"  # beside a wall time measured while other processes shared the CPU
STALE_MARK = "‡"  # beside a model whose cells ran with an earlier version of its preset


def cell_key(model: str, category: str, seed: int) -> str:
    """A benchmark cell's name (and its JSON file's stem): ``padim__bottle__seed0``."""
    return f"{model}__{category}__seed{seed}"


def busy_note(busy: int, total: int) -> str:
    """The line under a table that has marked times ("" when none is marked)."""
    if not busy:
        return ""
    return (
        f"\n{BUSY_MARK} wall time measured while other processes shared the CPU ({busy} of {total} cells): "
        f"inflated; compare the CPU seconds instead.\n"
    )


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
        entry["busy"] = sum(1 for r in ok if r.get("busy"))  # seeds whose wall times ran on a shared CPU
        entry["stale"] = sum(1 for r in ok if r.get("stale"))  # seeds run with an earlier version of the preset
        for key in (*METRICS, *VIDEO_METRICS, *COSTS):
            values = [v for v in (_number(r.get(key)) for r in ok) if v is not None]
            mean = sum(values) / len(values) if values else None
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
            entry[key], entry[f"{key}_std"] = mean, std
        summary.append(entry)
    return summary


def markdown_table(rows: list[dict], info: dict | None = None) -> str:
    """Mean ± std over seeds per (model, category); wall times of cells that shared the CPU marked ``†``."""
    from adlearn.machine import describe

    def cell(entry, key, fmt, spread=True):
        mean, std = entry.get(key), entry.get(f"{key}_std")
        if mean is None:
            return "—"
        return format(mean, fmt) + (f" ± {format(std, fmt)}" if spread and std and entry["seeds"] > 1 else "")

    def wall(entry, key, fmt):
        text = cell(entry, key, fmt)
        return text + f" {BUSY_MARK}" if entry["busy"] and text != "—" else text

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
    summary = summarize(rows)
    for entry in summary:
        lines.append(
            "| "
            + " | ".join(
                [
                    entry["model"] + (f" {STALE_MARK}" if entry["stale"] else ""),
                    entry["category"],
                    f"{entry['seeds']}" + (f" ({entry['failed']} failed)" if entry["failed"] else ""),
                    cell(entry, "image_auroc", ".3f"),
                    cell(entry, "pixel_auroc", ".3f"),
                    cell(entry, "pixel_aupro", ".3f"),
                    cell(entry, "image_f1max", ".3f"),
                    wall(entry, "fit_seconds", ".1f"),
                    cell(entry, "fit_cpu_seconds", ".1f"),
                    wall(entry, "images_per_second", ".1f"),
                    cell(entry, "peak_memory_mb", ".0f", False),
                    cell(entry, "parameters", ",.0f", False),
                    cell(entry, "model_size_mb", ".1f", False),
                ]
            )
            + " |"
        )
    text = "\n".join(lines) + "\n" + video_table(summary, cell, wall)
    text += busy_note(sum(e["busy"] for e in summary), sum(e["seeds"] for e in summary))
    if any(e["stale"] for e in summary):
        text += (
            f"\n{STALE_MARK} Computed with an earlier version of the model's preset (the model has changed since): "
            "the command above reruns these cells.\n"
        )
    if info:
        busy = [r for r in rows if r.get("busy")]
        loads = [r["load_before"][0] for r in rows if r.get("load_before")]
        text += (
            f"\nCells ran on: {cell_machines(rows)}. Table written on: {describe(info['machine'])}. "
            f"Preset: {info.get('preset') or 'none'}; device {info.get('device')}; data: {data_label(info.get('root'))}.\n"
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


def video_table(summary: list[dict], cell, wall) -> str:
    """The video section: frame AUROC pooled and per video, region AUROC, per anomaly kind (video models only)."""
    videos = [e for e in summary if e.get("frame_auroc_macro") is not None]
    if not videos:
        return ""
    header = ["model", "videos", "seeds", "frame AUROC", "per video", "region AUROC", "velocity", "pose"]
    header += ["appearance", "fit CPU s", "predict clips/s"]
    lines = ["", "Video models (frame AUROC: all test frames pooled; per video: the mean of each video's):", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for entry in videos:
        keys = ["frame_auroc_micro", "frame_auroc_macro", "region_auroc"]
        keys += ["frame_auroc_velocity", "frame_auroc_pose", "frame_auroc_appearance"]
        values = [entry["model"], entry["category"], str(entry["seeds"]), *(cell(entry, k, ".3f") for k in keys)]
        values += [cell(entry, "fit_cpu_seconds", ".1f"), wall(entry, "images_per_second", ".1f")]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def data_label(root) -> str:
    """The data a table was computed on, without the machine's paths: the root folder's name."""
    if not root or str(root) == "embedded synthetic":
        return "the embedded synthetic data (images, or the surveillance videos for video models)"
    return f"`{Path(str(root)).name}/` (an MVTec-layout root)"


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


# ------------------------------------------------------------------------------------------- committed cells
def committed_cells(dataset: str, results_dir: str | Path | None = None) -> list[dict]:
    """The finished benchmark cells of ``dataset`` ("bottle", "synthetic") as committed in a checkout of the
    repository: ``benchmarks/results/<dataset>/cells/*.json`` (``results_dir`` overrides the folder holding
    ``<dataset>/``). A pip-installed adlearn has no checkout: pass ``results_dir``."""
    folder = Path(results_dir) if results_dir else Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    cells = folder / dataset / "cells"
    if not cells.is_dir():
        raise FileNotFoundError(
            f"no benchmark cells in {cells}: run from a checkout of the adlearn repository, or pass results_dir= "
            "the folder an `adlearn benchmark --out` run wrote (holding <dataset>/cells)"
        )
    rows = [json.loads(p.read_text()) for p in sorted(cells.glob("*.json"))]
    return [row for row in rows if row.get("status") == "ok"]


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
        from adlearn.runner import read_result

        rows = [read_result(p) for p in sorted((out / "cells").glob("*.json"))]
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


# ------------------------------------------------------------------------------------------- sweep tables
SWEEP_REPORT_COLUMNS = (
    "model",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1max",
    "fit_seconds",
    "images_per_second",
    "peak_memory_mb",
)
SWEEP_WALL_COLUMNS = {"seconds", "fit_seconds", "images_per_second"}  # wall times: marked when the CPU was shared


def sweep_tables(rows: list[dict], out: Path) -> None:
    """``results.csv`` and ``results.md`` of `adlearn sweep`: one row per notebook run, its parameters, its
    status and time, and what the notebook recorded with ``report(...)``."""
    names = sorted({name for row in rows for name in row["parameters"]})
    header = ["notebook", *names, "status", "seconds", *SWEEP_REPORT_COLUMNS, "busy", "error"]
    table = []
    for row in rows:
        report = row.get("report") or {}
        values = {
            "notebook": row["notebook"],
            **{n: row["parameters"].get(n) for n in names},
            "status": row["status"],
            "seconds": row.get("cell_seconds", row.get("seconds")),  # runs before the runner wrote "seconds"
            **{c: report.get(c) for c in SWEEP_REPORT_COLUMNS},
            "busy": row.get("busy"),
        }
        error = (row.get("error") or "").strip().splitlines()
        table.append({**values, "error": error[0] if error else ""})
    with open(Path(out) / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)

    shown = [h for h in header if h not in ("busy", "error")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for values in table:
        cells = [
            _sweep_value(values[h], ".1f" if h == "seconds" else ".4g")
            + (f" {BUSY_MARK}" if values["busy"] and h in SWEEP_WALL_COLUMNS else "")
            for h in shown
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" + busy_note(sum(1 for v in table if v["busy"]), len(table))
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        text += "\nFailed runs:\n\n" + "".join(
            f"- `{row['name']}`: {(row.get('error') or '').strip().splitlines()[0] if row.get('error') else ''}\n"
            for row in failed
        )
    (Path(out) / "results.md").write_text(text)


def _sweep_value(value, fmt: str) -> str:
    if value is None:
        return "—"
    return format(value, fmt) if isinstance(value, float) else str(value)
