"""The benchmark drivers that need no anomalib run end to end on tiny data (CPU), so a GPU session can trust them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_driver(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_torch_thread")
def test_gpu_driver_runs_on_cpu_and_writes_every_figure(small_synthetic_root, tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "gpu.json"
    status = load_driver("bench_gpu").main([
        "--device", "cpu", "--root", str(small_synthetic_root), "--category", SYNTHETIC_CATEGORIES[0],
        "--max-train", "6", "--epochs", "2", "--repeats", "1", "--nn-half", "--json", str(out)])
    assert status == 0
    results = {row["model"]: row for row in json.loads(out.read_text())["results"]}
    assert set(results) == {"patchcore", "stfpm", "fastflow"}
    patchcore = results["patchcore"]
    assert patchcore["n_train"] == 6 and patchcore["nn_half"] is True
    assert patchcore["fit_s"] > 0 and patchcore["predict_images_per_s"] > 0 and 0 <= patchcore["pixel_auroc"] <= 1
    for name in ("stfpm", "fastflow"):
        assert results[name]["epochs"] == 2 and len(results[name]["epoch_s"]) == 2
