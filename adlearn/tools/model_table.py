"""The README's model table, generated from the committed benchmark cells (``python -m adlearn.tools.model_table``).

The figures a reader sees first must be the ones the cells hold, not copies that drift. This tool reads
every cell in ``benchmarks/results/bottle/cells`` (real MVTec AD bottle, each model's ``cpu`` preset; a video
model: ``benchmarks/results/video/cells``, frame AUROC on the synthetic videos) and writes, between the README's markers, one row per registered model: image and pixel AUROC (mean over the
seeds that ran, with their range), the seeds, and the fit CPU seconds. The model's name, what it is and its
side-by-side result against anomalib come from ``benchmarks/results/models.json`` (measured by the scripts in
``benchmarks/``; the method page ``docs/benchmarks.md`` says how).

    python -m adlearn.tools.model_table           # rewrite the README's table
    python -m adlearn.tools.model_table --check   # exit 1 when the README's table differs from the cells
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
STALE_MARK = "‡"


def bottle_cells(cells: Path) -> dict[str, list[dict]]:
    """The finished cells per model (status ok), seeds in order."""
    per_model: dict[str, list[dict]] = {}
    for path in sorted(Path(cells).glob("*.json")):
        row = json.loads(path.read_text())
        if row.get("status") == "ok":
            per_model.setdefault(row["model"], []).append(row)
    for rows in per_model.values():
        rows.sort(key=lambda r: r["seed"])
    return per_model


def figure(values: list[float]) -> str:
    """``0.999`` for one seed or equal seeds, ``0.999 (0.998–1.000)`` for several that differ."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    low, high = min(values), max(values)
    text = f"{mean:.3f}"
    return text if f"{low:.3f}" == f"{high:.3f}" else f"{text} ({low:.3f}–{high:.3f})"


def is_stale(row: dict) -> bool:
    """Did the cell run with another version of the model's ``cpu`` preset than today's?"""
    from adlearn.options import preset_options

    current = json.loads(json.dumps(preset_options(row["model"], "cpu"), default=str))
    return (row.get("spec") or {}).get("preset_options") != current


def table(cells: Path, notes: dict, models: list[str], video_cells: Path | None = None) -> str:
    header = "| model | kind | image AUROC | pixel AUROC | seeds | fit CPU s | against anomalib 2.7 (same data, weights, threads) |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    per_model = bottle_cells(cells)
    per_video_model = bottle_cells(video_cells) if video_cells is not None and Path(video_cells).is_dir() else {}
    stale_any = video_any = False
    for model in models:
        note = notes.get(model, {})
        name, kind, reference = note.get("name", model), note.get("kind", ""), note.get("reference", "")
        rows = per_model.get(model, [])
        if not rows and per_video_model.get(model):  # a video model: frame AUROC on the synthetic videos
            video = per_video_model[model]
            video_any = True
            frame = figure([r["frame_auroc_micro"] for r in video if r.get("frame_auroc_micro") is not None])
            cpu = [r["fit_cpu_seconds"] for r in video if r.get("fit_cpu_seconds") is not None]
            cpu_text = f"{sum(cpu) / len(cpu):.0f}" if cpu else "—"
            seeds = ", ".join(str(r["seed"]) for r in video)
            lines.append(f"| {name} | {kind} | {frame} (frames) ◊ | — | {seeds} | {cpu_text} | {reference} |")
            continue
        if not rows:
            lines.append(f"| {name} | {kind} | not run yet | not run yet | 0 | — | {reference} |")
            continue
        stale = any(is_stale(r) for r in rows)
        stale_any |= stale
        image = figure([r["image_auroc"] for r in rows if r.get("image_auroc") is not None])
        pixel = figure([r["pixel_auroc"] for r in rows if r.get("pixel_auroc") is not None])
        cpu = [r["fit_cpu_seconds"] for r in rows if r.get("fit_cpu_seconds") is not None]
        cpu_text = f"{sum(cpu) / len(cpu):.0f}" if cpu else "—"
        seeds = ", ".join(str(r["seed"]) for r in rows)
        lines.append(
            f"| {name}{' ' + STALE_MARK if stale else ''} | {kind} | {image} | {pixel} | {seeds} | {cpu_text} | {reference} |"
        )
    text = "\n".join(lines) + "\n"
    if video_any:
        text += (
            "\n◊ a video model: frame-level AUROC (all frames pooled) on the embedded synthetic surveillance videos "
            "(`benchmarks/results/video/cells`), not the bottle.\n"
        )
    if stale_any:
        text += (
            f"\n{STALE_MARK} computed with an earlier version of the model's `cpu` preset; the book's Benchmarks page "
            "gives the command that reruns it.\n"
        )
    return text


def generated_readme(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README has no {BEGIN} ... {END} markers to write the model table between")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    from adlearn.models.registry import MODEL_CLASSES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's table differs from the cells")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--cells", type=Path, default=REPO / "benchmarks" / "results" / "bottle" / "cells")
    parser.add_argument("--notes", type=Path, default=REPO / "benchmarks" / "results" / "models.json")
    parser.add_argument("--video-cells", type=Path, default=REPO / "benchmarks" / "results" / "video" / "cells")
    args = parser.parse_args(argv)
    notes = json.loads(args.notes.read_text())
    missing = [m for m in MODEL_CLASSES if m not in notes]
    if missing:
        raise SystemExit(f"{args.notes} has no entry for {', '.join(missing)}: add its name, kind and reference result")
    order = [m for m in notes if m in MODEL_CLASSES]  # the notes file's order: families together
    readme = args.readme.read_text()
    new = generated_readme(readme, table(args.cells, notes, order, args.video_cells))
    if args.check:
        if new != readme:
            print(f"{args.readme}: the model table differs from the cells; run python -m adlearn.tools.model_table")
            return 1
        return 0
    args.readme.write_text(new)
    print(f"wrote the model table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
