"""``adlearn predict`` and ``adlearn export`` (adlearn/cli.py, adlearn/deploy.py predict_folder): a saved
model and its export give the same CSV; unreadable files are listed with their reason, the others scored."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from tiny_models import TINY

pytest.importorskip("onnxruntime")

from adlearn.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_synthetic_root):
    """A tiny PaDiM fitted on the synthetic category and saved: ``(path, test folder)``."""
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset
    from adlearn.models import create

    model = create("padim", device="cpu", seed=0, **TINY["padim"])
    category = small_synthetic_root / SYNTHETIC_CATEGORIES[0]
    model.fit(MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], "train", transform=model.transform))
    path = model.save(tmp_path_factory.mktemp("model") / "padim.pt")
    return path, category


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_saved_and_exported_model_write_the_same_scores(saved, tmp_path, capsys):
    model_path, category = saved
    normal = category / "train" / "good"  # stands in for held-out normal images in this test
    assert (
        main(["export", str(model_path), "--format", "onnx", "--out", str(tmp_path / "exp"), "--normal", str(normal)])
        == 0
    )
    assert "threshold:" in capsys.readouterr().out
    test_dir = category / "test"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert main(["predict", str(tmp_path / "exp"), str(test_dir), str(bad), "--out", str(tmp_path / "a")]) == 0
    assert (
        main(["predict", str(model_path), str(test_dir), str(bad), "--out", str(tmp_path / "b"), "--threshold", "0"])
        == 0
    )
    exported, eager = rows(tmp_path / "a" / "predictions.csv"), rows(tmp_path / "b" / "predictions.csv")
    n_images = len([p for p in test_dir.rglob("*.png")])
    assert len(exported) == len(eager) == n_images + 1
    assert [r["path"] for r in exported] == [r["path"] for r in eager]
    broken = [r for r in exported if r["path"] == str(bad)]
    assert broken[0]["score"] == "" and "UnidentifiedImageError" in broken[0]["error"]
    scored = [(float(a["score"]), float(b["score"])) for a, b in zip(exported, eager) if a["score"]]
    assert len(scored) == n_images
    np.testing.assert_allclose(*zip(*scored), rtol=1e-3)
    # labels: at the export's threshold (calibrated on normal images), and all 1 at --threshold 0
    assert {r["label"] for r in exported if r["score"]} <= {"0", "1"} and all(
        r["threshold"] for r in exported if r["score"]
    )
    assert {r["label"] for r in eager if r["score"]} == {"1"}
    overlays = sorted((tmp_path / "a" / "overlays").glob("*.png"))
    assert len(overlays) == n_images


def test_threshold_calibrated_on_normal_images_flags_none_of_them(saved, tmp_path):
    model_path, category = saved
    normal = category / "train" / "good"
    main(["export", str(model_path), "--out", str(tmp_path / "exp"), "--normal", str(normal)])
    main(["predict", str(tmp_path / "exp"), str(normal), "--out", str(tmp_path / "p"), "--no-overlays"])
    table = rows(tmp_path / "p" / "predictions.csv")
    threshold = float(table[0]["threshold"])
    assert len(table) == 12 and {r["label"] for r in table} <= {"0", "1"}
    # quantile 1.0: the largest normal score (PyTorch's) is the threshold, so none is flagged, but the one
    # at the top, which onnxruntime may score a rounding error above it
    flagged = [float(r["score"]) for r in table if r["label"] == "1"]
    assert len(flagged) <= 1 and all(abs(score - threshold) <= 1e-4 * threshold for score in flagged)
    assert max(float(r["score"]) for r in table) == pytest.approx(threshold, rel=1e-4)
    assert not (tmp_path / "p" / "overlays").exists()


def test_without_threshold_labels_stay_empty(saved, tmp_path, capsys):
    model_path, category = saved
    image = next((category / "test").rglob("*.png"))
    assert main(["predict", str(model_path), str(image), "--out", str(tmp_path)]) == 0
    assert "no threshold" in capsys.readouterr().err
    (row,) = rows(tmp_path / "predictions.csv")
    assert row["score"] and row["label"] == "" and row["threshold"] == ""


def test_export_errors(saved, tmp_path, capsys):
    model_path, _ = saved
    assert main(["export", str(model_path), "--format", "tflite", "--out", str(tmp_path)]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
