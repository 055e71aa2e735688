"""`adlearn benchmark`: every (model, category, seed) cell on the same data, accuracy *and* cost.

    adlearn benchmark --models all --seeds 0,1,2 --out build/benchmark/synthetic
    adlearn benchmark --models padim,patchcore --root $ADLEARN_MVTEC_ROOT --categories bottle \\
        --out build/benchmark/bottle --book-page book/chapters/benchmarks.md --label "real bottle"
    adlearn benchmark --models all --seeds 0,1,2 --scheduler tcp://SCHEDULER:8786 --out /shared/benchmark

What a cell *is* lives here (`run_cell`: fit and evaluate one model on one category with one seed); running the
grid is `adlearn.runner`'s: each cell in a fresh Python process (its peak memory is its own, a crash or a hang
cannot take the others down, ``--time-limit`` can stop it), started by a dask.distributed worker — a
LocalCluster of ``--jobs`` workers (default 1: one cell at a time, so that no cell slows another down), or the
workers of an existing cluster (``--scheduler tcp://HOST:PORT``, as for `adlearn sweep`; ``out`` then on a
shared file system); ``--sequential`` runs them from this process without Dask.
A cell records image/pixel AUROC, AUPRO, F1-max, fit seconds (wall and process CPU), predict images/s, peak
memory, the number of parameters and the saved model's size, the machine it ran on, plus the load around it
(`adlearn.machine`): a wall time measured while other processes shared the CPU is marked in every table.
A table built from cells of several runs (an interrupted grid resumed elsewhere) lists every machine they came from.

Output (``--out``): ``cells/<model>__<category>__seed<k>.json`` (one per finished cell: a rerun
skips them, so an interrupted benchmark picks up where it stopped; failed cells are kept with their
error and retried only with ``--retry-failed``), ``logs/`` (each cell's output), ``results.csv``
(one row per cell), ``results.md`` (mean ± std over seeds per model and category, the machine, the
load), ``auroc_vs_fit_time.png`` and ``auroc_per_model.png``, ``machine.json`` (`adlearn.reports`).
``--book-page`` writes (or updates, one section per ``--label``) the book's generated "Benchmarks" page.

Every cell builds its model as ``adlearn.create(name, preset=..., **options)`` does (`adlearn.options`):
``--preset`` defaults to ``cpu`` (offline backbones, a laptop's budget; printed at the start; ``--preset paper``
or ``none`` for the papers' settings), and ``--set`` is checked for every model before the first cell.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from adlearn.reports import METRICS, VIDEO_METRICS, cell_key, write_book_page, write_reports

CELLS = "cells"
VIDEO_CATEGORY = "surveillance"  # video models run on the embedded synthetic surveillance videos
CELL_FUNCTION = "adlearn.benchmark:run_cell"  # what the runner calls in each cell's process
RERUN_WHEN_CHANGED = ("preset_options",)  # a cell of an edited preset is stale: it runs again


# ------------------------------------------------------------------------------------------- one cell
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
    if getattr(model, "input_kind", "image") == "video":
        return _video_cell(model, options)
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


def _video_cell(model, options: dict) -> dict:
    """A video model's cell: fit on the synthetic surveillance training clips, evaluate on the test clips."""

    from adlearn.data import ClipDataset, synthetic_surveillance
    from adlearn.evaluate import fit_and_evaluate
    from adlearn.machine import cell_machine

    train, test = (ClipDataset(synthetic_surveillance(split), clip_length=2) for split in ("train", "test"))
    results = fit_and_evaluate(model, train, test)
    with tempfile.TemporaryDirectory() as tmp:
        size = model.save(Path(tmp) / "model.pt").stat().st_size
    keys = (*METRICS, *VIDEO_METRICS, "fit_seconds", "fit_cpu_seconds", "images_per_second", "peak_memory_mb")
    row = {key: results.get(key) for key in (*keys, "n_train", "n_test")}
    row.update(
        parameters=sum(p.numel() for p in model.parameters()),
        model_size_mb=size / 2**20,
        options={k: v for k, v in options.items() if k not in ("device", "seed")},
        device=str(model.device),
        machine=cell_machine(model.device),
    )
    return row


def is_video_model(name: str) -> bool:
    from adlearn.models import get_model_class

    return getattr(get_model_class(name), "input_kind", "image") == "video"


# ------------------------------------------------------------------------------------------- all cells
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
    jobs: int = 1,
    scheduler: str | None = None,
    sequential: bool = False,
) -> list[dict]:
    """Run every cell not finished yet (`adlearn.runner`), write the reports; return every cell's row.

    A finished cell computed with other settings is an error (use another ``out``); one computed with an
    earlier version of the same preset is stale: it runs again."""
    from adlearn.machine import LoadGuard
    from adlearn.runner import Cell, run_grid, write_result

    options = options or {}
    _check_set_keys(models, options)
    out = Path(out)
    settings = {
        "root": str(root) if root else None,
        "preset": preset,
        "device": device,
        "image_size": image_size,
        "backbone": backbone,
        "set": options,
        "threads": threads,
        "max_train": max_train,
    }
    cells = [
        Cell(
            key=cell_key(model, category, seed),
            spec=cell_spec(model, category, seed, settings),
            path=f"{CELLS}/{cell_key(model, category, seed)}.json",
            fields={"model": model, "category": category, "seed": seed},
        )
        for model in models
        for category in ([VIDEO_CATEGORY] if is_video_model(model) else categories)  # video: its own data
        for seed in seeds
    ]
    guard = LoadGuard(allow_busy=allow_busy, threshold=busy_threshold)
    where = {"jobs": jobs, "scheduler": scheduler, "sequential": sequential}
    limits = {"threads": threads, "time_limit": time_limit, "guard": guard}
    resume = {"retry_failed": retry_failed, "rerun_when_changed": RERUN_WHEN_CHANGED}
    prepare = None if root else _embedded_data
    rows = run_grid(cells, CELL_FUNCTION, out, **where, **limits, **resume, prepare=prepare, progress=progress)
    info = guard.summary()
    if threads:  # what the cells ran with, not this parent process
        info["machine"]["torch_threads"] = threads
    info.update(preset=preset, device=device, image_size=image_size, root=str(root) if root else "embedded synthetic")
    write_result(out / "machine.json", info)  # atomically, as the cells
    write_reports(rows, out, info)
    return rows


def cell_spec(model: str, category: str, seed: int, settings: dict) -> dict:
    """What a cell's result depends on (stored with it: a rerun with other settings is refused, not mixed in)."""
    spec = {"model": model, "category": category, "seed": seed, **settings}
    spec["preset_options"] = preset_options(model, settings["preset"])
    return json.loads(json.dumps(spec, default=str))  # as it reads back from the cell's file


def _embedded_data() -> None:
    """Generate the embedded synthetic data once, before the cells read it."""
    from adlearn.data import synthetic_root

    synthetic_root(image_size=256, seed=0)


def preset_options(model: str, preset: str | None) -> dict | None:
    """What ``preset`` sets for ``model`` (recorded in each cell: a preset edited later makes its cells stale)."""
    if preset is None:
        return None
    from adlearn.options import preset_options as chosen  # an unknown preset: an error naming the model's presets

    return chosen(model, preset)


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
    parser.add_argument(
        "--jobs", type=int, default=1, help="LocalCluster workers = cells at a time (default 1: timings unshared)"
    )
    parser.add_argument(
        "--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786 (instead of a LocalCluster)"
    )
    parser.add_argument("--sequential", action="store_true", help="no Dask: the cells one after the other")
    parser.add_argument("--out", default="build/benchmark", help="output folder (default build/benchmark)")
    parser.add_argument(
        "--book-page", help="also write this section into the book page, e.g. book/chapters/benchmarks.md"
    )
    parser.add_argument("--label", help="the book page section's title (default: the data's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite the table, figures and book section from the cells already in --out "
        "(those of --models/--categories/--seeds; the missing ones are listed)",
    )
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
    if args.report_only:
        rows = stored_cells(out, models, categories, seeds, preset)
        write_reports(
            rows, out, json.loads((out / "machine.json").read_text()) if (out / "machine.json").is_file() else None
        )
    else:
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
            jobs=args.jobs,
            scheduler=args.scheduler,
            sequential=args.sequential,
        )
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, auroc_vs_fit_time.png, auroc_per_model.png")
    if args.book_page:
        label = args.label or ("embedded synthetic data" if args.root is None else Path(args.root).name)
        print(f"wrote {write_book_page(out, Path(args.book_page), label, command_line(args), rows)}")
    failed = [r for r in rows if r.get("status") != "ok"]
    return 1 if failed else 0


def stored_cells(
    out: Path, models: list[str], categories: list[str], seeds: list[int], preset: str | None
) -> list[dict]:
    """The cells of this grid already in ``out/cells`` (``--report-only``); the missing ones are listed on
    stderr, and a cell whose preset has changed since it ran is marked ``stale`` (the tables flag it)."""
    from adlearn.runner import read_result

    rows, missing = [], []
    for model in models:
        current = json.loads(json.dumps(preset_options(model, preset), default=str))  # as a cell stores it
        for category in [VIDEO_CATEGORY] if is_video_model(model) else categories:
            for seed in seeds:
                path = out / "cells" / f"{cell_key(model, category, seed)}.json"
                if not path.is_file():
                    missing.append(path.stem)
                    continue
                row = read_result(path)
                row["stale"] = (row.get("spec") or {}).get("preset_options") != current
                rows.append(row)
    if missing:
        print(f"--report-only: {len(missing)} cells not run yet: {', '.join(missing)}", file=sys.stderr)
    if not rows:
        raise ValueError(
            f"--report-only: no cell of this grid in {out / 'cells'}; run it first (without --report-only)"
        )
    return rows


def command_line(args) -> str:
    """The ``adlearn benchmark`` command that reproduces this run (for the book page)."""
    parts = ["adlearn benchmark", f"--models {args.models}"]  # --report-only left out: this runs the cells
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
