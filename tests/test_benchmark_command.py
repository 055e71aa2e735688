"""`adlearn benchmark`: what a cell records, its options and presets, the reports and the book page.

Running the grid (own processes, resume, failures, time limits, a Dask cluster) is `adlearn.runner`'s:
tests/test_runner.py."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

import adlearn
from adlearn import benchmark, reports


def rows_for_tables():
    row = {
        "status": "ok",
        "pixel_auroc": 0.9,
        "pixel_aupro": 0.7,
        "image_f1max": 0.8,
        "pixel_f1max": 0.3,
        "fit_seconds": 2.0,
        "images_per_second": 10.0,
        "peak_memory_mb": 900.0,
        "parameters": 1000,
        "model_size_mb": 1.5,
        "load_before": [0.1, 0.1, 0.1],
        "busy": False,
    }
    return [
        {**row, "model": "padim", "category": "weave", "seed": 0, "image_auroc": 0.8, "machine": "CPU B, 2 CPUs"},
        {**row, "model": "padim", "category": "weave", "seed": 1, "image_auroc": 0.9, "machine": "CPU A, 2 CPUs"},
        {
            **row,
            "model": "padim",
            "category": "weave",
            "seed": 2,
            "image_auroc": 0.95,
            "busy": True,
            "machine": "CPU B, 2 CPUs",
        },
        {"model": "dfm", "category": "weave", "seed": 0, "status": "failed", "error": "ValueError: bad\n"},
    ]


def test_summary_is_the_mean_and_std_over_seeds_and_failures_are_listed():
    summary = {e["model"]: e for e in reports.summarize(rows_for_tables())}
    values = [0.8, 0.9, 0.95]
    mean = sum(values) / 3
    assert summary["padim"]["image_auroc"] == pytest.approx(mean)
    assert summary["padim"]["image_auroc_std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 3))
    assert summary["padim"]["seeds"] == 3 and summary["dfm"] == {**summary["dfm"], "seeds": 0, "failed": 1}
    info = {
        "machine": {"cpu_model": "Test CPU", "physical_cores": 2, "logical_cpus": 4},
        "busy_threshold": 0.5,
        "preset": "cpu",
        "device": "cpu",
        "root": "embedded synthetic",
    }
    table = reports.markdown_table(rows_for_tables(), info)
    assert f"| padim | weave | 3 | {mean:.3f} ± " in table
    assert "| dfm | weave | 0 (1 failed) | — |" in table
    assert "Table written on: Test CPU, 2 cores / 4 threads" in table and "Preset: cpu" in table
    # every machine the cells came from, most cells first; a cell from before cells recorded it is counted apart
    assert "Cells ran on: CPU B, 2 CPUs (2 cells); CPU A, 2 CPUs (1 cell); not recorded (1 cell)." in table
    assert "**1 of 4 cells ran while other processes used the CPU**" in table
    # the wall times of a row with a seed that shared the CPU are marked, and the mark is explained
    assert "| 2.0 † | — | 10.0 † |" in table and "| dfm | weave | 0 (1 failed) | — | — | — | — | — | — | — |" in table
    assert "† wall time measured while other processes shared the CPU (1 of 3 cells)" in table
    assert "`dfm__weave__seed0` (failed): ValueError: bad" in table


def test_the_cell_passes_the_preset_and_only_the_options_given(monkeypatch):
    """A cell calls adlearn.create(name, preset=..., **explicit): the preset chooses backbone and image size
    unless --backbone / --image-size are given; no option is added behind the preset's back."""
    import adlearn.models

    calls = []

    def fake_create(name, preset=None, **options):
        calls.append((name, preset, options))
        raise RuntimeError("stop here")

    monkeypatch.setattr(adlearn.models, "create", fake_create)
    spec = {"model": "padim", "category": "weave", "seed": 0, "image_size": None, "device": "cpu", "set": {}}
    for preset, size in (("cpu", None), ("cpu", 64), (None, None)):
        with pytest.raises(RuntimeError, match="stop here"):
            benchmark.run_cell({**spec, "model": "efficient_ad", "preset": preset, "image_size": size})
    assert [call[1] for call in calls] == ["cpu", "cpu", None]
    assert calls[0][2] == {"device": "cpu", "seed": 0}  # EfficientAD's cpu recipe keeps its own 128 px
    assert calls[1][2]["image_size"] == 64 and "image_size" not in calls[2][2]  # explicit wins; else the model's
    assert "backbone" not in calls[0][2] and "backbone" not in calls[2][2]  # never a silent backbone switch
    assert adlearn.models.get_model_class("efficient_ad").preset("cpu")["image_size"] == 128


def test_bad_arguments_are_named():
    from adlearn.options import OptionError

    with pytest.raises(ValueError, match="unknown model"):
        benchmark.resolve_models("padim,nope")
    # one model: the same message as adlearn.create's
    with pytest.raises(OptionError, match=r"padim: unknown option 'max_epochs'.*no training options"):
        benchmark._check_set_keys(["padim"], {"max_epochs": 2})
    with pytest.raises(OptionError, match=r"unknown option 'max_epoch' \(did you mean 'max_epochs'\?\): none of"):
        benchmark._check_set_keys(["padim", "stfpm"], {"max_epoch": 2})
    with pytest.raises(OptionError, match="stfpm: unknown option 'n_features'"):
        benchmark._check_set_keys(["padim", "stfpm"], {"stfpm.n_features": 2})
    with pytest.raises(OptionError, match="'dfm' is not one of this run's models"):
        benchmark._check_set_keys(["padim", "stfpm"], {"dfm.n_features": 2})
    with pytest.raises(OptionError, match="padim has no preset 'gpu'"):
        benchmark.preset_options("padim", "gpu")


def test_a_plain_key_goes_to_the_models_that_have_it_and_the_others_are_named():
    """--set max_epochs=2: the training loop's options go to trained models; PaDiM, which has none, is named."""
    assert benchmark._check_set_keys(["padim", "stfpm"], {"max_epochs": 2, "patience": 1}) == {
        "max_epochs": ["padim"],
        "patience": ["padim"],
    }
    spec = {
        "seed": 0,
        "device": "cpu",
        "image_size": 64,
        "set": {"max_epochs": 2, "patience": 1, "padim.n_features": 9},
    }
    assert benchmark.model_options("stfpm", spec)["max_epochs"] == 2
    assert benchmark.model_options("padim", spec) == {"device": "cpu", "seed": 0, "image_size": 64, "n_features": 9}
    model = adlearn.create("stfpm", **{**benchmark.model_options("stfpm", spec), "pretrained": "none"})
    assert model.train_config.max_epochs == 2 and model.train_config.patience == 1


def test_benchmark_prints_its_preset_and_the_models_an_option_skips(tmp_path, monkeypatch, capsys):
    from adlearn.cli import main

    seen = {}

    def fake_run(models, categories, seeds, out, **settings):
        seen.update(settings)
        raise RuntimeError("stop before the cells")

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    argv = ["benchmark", "--models", "padim,stfpm", "--set", "max_epochs=1", "--out", str(tmp_path)]
    with pytest.raises(RuntimeError, match="stop before the cells"):
        main(argv)
    err = capsys.readouterr().err
    assert "preset: cpu (padim: backbone='efficientnet_lite0'; stfpm: backbone='efficientnet_lite0'," in err
    assert "max_epochs: not an option of padim, which run without it" in err
    assert seen["preset"] == "cpu" and seen["options"] == {"max_epochs": 1}
    assert main([*argv[:-2], "--set", "max_epoch=1", "--out", str(tmp_path)]) == 2  # a typo: no cell runs
    assert "unknown option 'max_epoch' (did you mean 'max_epochs'?)" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        main([*argv, "--preset", "none"])
    assert seen["preset"] is None


@pytest.mark.slow
def test_a_cell_records_accuracy_cost_and_machine_and_a_failure_its_error(small_synthetic_root, tmp_path):
    from adlearn.cli import main
    from adlearn.data import SYNTHETIC_CATEGORIES

    category = SYNTHETIC_CATEGORIES[0]
    out, page = tmp_path / "bench", tmp_path / "book" / "benchmarks.md"
    common = [
        "--root",
        str(small_synthetic_root),
        "--categories",
        category,
        "--image-size",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--allow-busy",
    ]
    # padim gets an impossible channel count (dfm has no such option): one failing cell, the other goes on.
    status = main(
        [
            "benchmark",
            "--models",
            "padim,dfm",
            "--seeds",
            "0",
            "--set",
            "n_features=100000",
            *common,
            "--book-page",
            str(page),
            "--label",
            "tiny data",
        ]
    )
    assert status == 1
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(cells) == {f"padim__{category}__seed0", f"dfm__{category}__seed0"}
    failed, ok = cells[f"padim__{category}__seed0"], cells[f"dfm__{category}__seed0"]
    assert failed["status"] == "failed" and "n_features=100000" in failed["error"]
    assert ok["status"] == "ok" and 0 <= ok["image_auroc"] <= 1 and 0 <= ok["pixel_aupro"] <= 1
    assert ok["fit_seconds"] > 0 and ok["images_per_second"] > 0 and ok["peak_memory_mb"] > 0
    assert 0 < ok["fit_cpu_seconds"] < 2 * os.cpu_count() * ok["fit_seconds"] + 1  # process CPU, all threads
    assert ok["parameters"] > 0 and ok["model_size_mb"] > 0 and ok["n_train"] == 12
    assert len(ok["load_before"]) == 3 and isinstance(ok["busy"], bool) and ok["other_cpus"] >= 0
    from adlearn.machine import cell_machine, cpu_model

    assert ok["machine"] == cell_machine("cpu") and ok["machine"].startswith(cpu_model())
    assert failed["machine"] == ok["machine"]  # a failed cell names its machine too
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["padim", "dfm"] and list(table[0]) == list(reports.COLUMNS)
    assert (out / "auroc_vs_fit_time.png").stat().st_size > 0 and (out / "auroc_per_model.png").is_file()
    machine = json.loads((out / "machine.json").read_text())
    assert machine["machine"]["cpu_model"] and machine["image_size"] == 64
    assert machine["machine"]["torch_threads"] == 1  # the cells' --threads, not the parent's
    assert [part["label"] for part in machine["parts"]] == [f"padim__{category}__seed0", f"dfm__{category}__seed0"]
    text = page.read_text()
    assert text.startswith("# Benchmarks") and "## tiny data" in text and "| dfm |" in text
    assert (page.parent / "benchmark_figures" / "tiny_data_auroc_per_model.png").is_file()

    # The page shows the cells of the run its command reproduces, not every cell the folder holds; a section
    # written again is replaced, not added.
    rows = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    reports.write_book_page(
        out,
        page,
        "tiny data",
        "adlearn benchmark --models dfm ...",
        rows=[row for row in rows if row["model"] == "dfm"],
    )
    section = page.read_text().split("## tiny data")[1]
    assert "| dfm |" in section and "| padim |" not in section
    assert page.read_text().count("## tiny data") == 1


def test_figure_plots_cpu_time_when_a_cell_ran_on_a_busy_machine():
    idle = [{"fit_seconds": 10.0, "fit_cpu_seconds": 9.0, "busy": False}]
    busy = idle + [{"fit_seconds": 90.0, "fit_cpu_seconds": 20.0, "busy": True}]
    assert reports.fit_time_axis(idle)[0] == "fit_seconds"
    assert reports.fit_time_axis(busy) == (
        "fit_cpu_seconds",
        "fit CPU time (s, log scale; cells ran on a shared machine)",
    )
    assert reports.fit_time_axis(busy + [{"fit_seconds": 5.0, "busy": True}])[0] == "fit_seconds"  # no CPU column


def test_a_cell_from_an_edited_preset_runs_again(tmp_path, capsys):
    from adlearn.models import get_model_class
    from adlearn.runner import finished

    settings = {"root": None, "preset": "cpu", "device": "cpu", "image_size": None, "backbone": None, "set": {}}
    spec = benchmark.cell_spec("uflow", "bottle", 0, {**settings, "threads": 1, "max_train": None})
    assert spec["preset_options"]["image_size"] == get_model_class("uflow").presets["cpu"]["image_size"]
    assert benchmark.preset_options("uflow", None) is None
    path = tmp_path / "cells" / f"{benchmark.cell_key('uflow', 'bottle', 0)}.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"status": "ok", "spec": spec}))

    def done(spec):
        return finished(path, spec, rerun_when_changed=benchmark.RERUN_WHEN_CHANGED)

    assert done(spec)  # same preset: done
    edited = {**spec, "preset_options": {**spec["preset_options"], "blur_sigma": 99.0}}
    assert not done(edited)  # edited preset: stale
    assert "changed since this cell ran" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"settings \(preset_options, seed"):  # anything else: an error
        done({**edited, "seed": 1})


def test_every_model_gets_its_own_colour_and_marker_in_the_figures():
    models = list(adlearn.available_models())
    models = [*models, *[f"extra{i}" for i in range(30 - len(models))]]  # 30 names: three rounds of the colours
    colours, markers = reports.model_styles(models)
    styles = {(tuple(colours[m]), markers[m]) for m in models}
    assert len(styles) == len(models) == 30


def test_report_only_rewrites_the_tables_from_stored_cells_and_flags_stale_ones(tmp_path, capsys, monkeypatch):
    """--report-only runs no cell: the table is the stored cells' (a missing one listed), a cell of an edited
    preset is marked ‡, and the book page names no machine path."""
    out = tmp_path / "bench"
    (out / "cells").mkdir(parents=True)
    base = {"category": "bottle", "status": "ok", "pixel_auroc": 0.9, "fit_seconds": 1.0, "fit_cpu_seconds": 1.0}
    current = json.loads(json.dumps(benchmark.preset_options("padim", "cpu")))
    for seed, auroc in ((0, 0.8), (1, 1.0)):
        spec = {"preset_options": current if seed == 0 else {"backbone": "something_older"}}
        row = {**base, "model": "padim", "seed": seed, "image_auroc": auroc, "spec": spec}
        (out / "cells" / f"padim__bottle__seed{seed}.json").write_text(json.dumps(row))
    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a, **k: pytest.fail("--report-only ran cells"))
    page = tmp_path / "page.md"
    (tmp_path / "mvtec" / "bottle" / "train").mkdir(parents=True)
    args = ["benchmark", "--report-only", "--models", "padim", "--root", str(tmp_path / "mvtec"), "--categories"]
    args += ["bottle", "--seeds", "0,1,2", "--out", str(out), "--book-page", str(page), "--label", "bottle"]
    from adlearn.cli import main

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "padim__bottle__seed2" in captured.err  # the missing cell is named
    table = (out / "results.md").read_text()
    assert "| padim ‡ | bottle | 2 | 0.900 ± 0.100 |" in table and reports.STALE_MARK in table
    assert str(tmp_path) not in page.read_text().split("```")[2]  # the table's note: no machine path
