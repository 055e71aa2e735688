"""The CLI contract: `adlearn models`, `adlearn evaluate ... --json`, `adlearn data synth`."""

from __future__ import annotations

import json

import pytest

from adlearn.cli import main

REQUIRED_KEYS = {
    "model",
    "category",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1max",
    "fit_seconds",
    "predict_seconds",
    "images_per_second",
    "peak_memory_mb",
}


def test_models_prints_one_name_per_line(capsys):
    from adlearn.models import available_models

    assert main(["models"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == available_models()


def test_evaluate_writes_the_json_contract(small_synthetic_root, tmp_path, capsys):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "padim",
            "--root",
            str(small_synthetic_root),
            "--category",
            SYNTHETIC_CATEGORIES[1],
            "--image-size",
            "64",
            "--backbone",
            "efficientnet_lite0",
            "--pretrained",
            "auto",
            "--set",
            "n_features=20",
            "--device",
            "cpu",
            "--seed",
            "0",
            "--json",
            str(out),
            "--figure",
            str(tmp_path / "map.png"),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(results)
    assert results["model"] == "padim" and results["category"] == SYNTHETIC_CATEGORIES[1]
    assert results["config"]["n_features"] == 20
    assert 0.0 <= results["image_auroc"] <= 1.0
    assert (tmp_path / "map.png").stat().st_size > 1000
    assert "padim" in capsys.readouterr().out  # the metrics table


def test_evaluate_errors_are_messages_not_tracebacks(small_synthetic_root, capsys):
    assert (
        main(
            [
                "evaluate",
                "padim",
                "--root",
                str(small_synthetic_root),
                "--category",
                "nope",
                "--backbone",
                "efficientnet_lite0",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "adlearn: error:" in capsys.readouterr().err
    assert main(["evaluate", "padim", "--set", "bogus=1", "--backbone", "efficientnet_lite0"]) == 2
    assert "padim: unknown option 'bogus'" in capsys.readouterr().err  # adlearn.options' one message
    with pytest.raises(SystemExit, match="without --category"):
        main(["evaluate", "padim", "--root", str(small_synthetic_root), "--backbone", "efficientnet_lite0"])


def test_data_synth_writes_the_mvtec_layout(tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES

    category = SYNTHETIC_CATEGORIES[-1]
    assert main(["data", "synth", "--root", str(tmp_path), "--category", category, "--image-size", "32"]) == 0
    assert any((tmp_path / category / "train" / "good").iterdir())
    assert any((tmp_path / category / "ground_truth").iterdir())


def test_models_lists_the_presets(capsys):
    assert main(["models", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "stfpm:\n" in out and "cpu    backbone='efficientnet_lite0', val_fraction=0.2, max_epochs=25" in out
    assert "paper  the defaults" in out and "paper  center_crop='auto'" in out  # PatchCore's paper crop


def test_evaluate_with_a_preset_and_explicit_options_over_it(small_synthetic_root, tmp_path, capsys):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "stfpm",
            "--preset",
            "cpu",
            "--root",
            str(small_synthetic_root),
            "--category",
            SYNTHETIC_CATEGORIES[0],
            "--image-size",
            "64",
            "--set",
            "max_epochs=1",
            "--set",
            "batch_size=4",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["preset"] == "cpu" and results["backbone"] == "efficientnet_lite0"  # from the preset
    assert results["config"]["max_epochs"] == 1 and results["config"]["val_fraction"] == 0.2
    assert results["image_size"] == 64  # explicit wins
    assert main(["evaluate", "stfpm", "--preset", "cpu", "--set", "max_epoch=1"]) == 2
    assert "unknown option 'max_epoch' (did you mean 'max_epochs'?)" in capsys.readouterr().err
    assert main(["evaluate", "stfpm", "--preset", "gpu"]) == 2  # a clear error message
    assert "stfpm has no preset 'gpu'; presets: cpu, paper (did you mean 'cpu'?)" in capsys.readouterr().err
